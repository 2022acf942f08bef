"""What every service process shares, and the start-up checks that come before it."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.contracts import Event, Topic, TopicNames
from smolit.infra.db import DatabaseUnreachable, SchemaMismatch, check_database, check_schema, open_pool
from smolit.infra.heartbeat import Heartbeat
from smolit.infra.kafka import (
    ConsumerLoop,
    EventProducer,
    Handler,
    KafkaProfile,
    LoopConfig,
    Outgoing,
    PostgresDeduper,
    check_broker,
    missing_topics,
)
from smolit.infra.metrics import ConsumerMetrics, serve_metrics
from smolit.infra.settings import Settings

from ..errors import SetupError

if TYPE_CHECKING:
    from smolit.agents import DeadlineSweeper
    from smolit.infra.registry import ModelRegistry

log = structlog.get_logger("smolit.services")


@dataclass
class Wiring:
    """What every service process shares: settings, broker profile, producer, pool, metrics registry."""

    settings: Settings
    profile: KafkaProfile
    topics: TopicNames
    producer: EventProducer
    pool: ConnectionPool
    registry: CollectorRegistry
    consumer_metrics: ConsumerMetrics
    instance: str

    def loop(
        self,
        group: str,
        topics: list[Topic],
        handler: Handler,
        *,
        dedupe: bool = True,
    ) -> ConsumerLoop:
        """A consumer loop in group `<topic prefix>-<group>`."""
        group = self.topics.group(group)
        return ConsumerLoop(
            self.profile.consumer(group),
            LoopConfig(
                group=group,
                topics=[self.topics(t) for t in topics],
                batch_size=self.settings.consumer_batch_size,
                max_attempts=self.settings.consumer_max_attempts,
                backoff_s=self.settings.consumer_backoff_s,
                dedupe=dedupe,
            ),
            handler,
            self.producer,
            PostgresDeduper(self.pool),
            self.consumer_metrics,
        )


def limit_threads(threads: int) -> None:
    """One compute pool per process, sized on purpose (must run before numpy/onnxruntime start their pools)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


def replay_lifecycle(w: Wiring, handler: Handler) -> None:
    """Feed the agent-lifecycle topic, from its start to its current end, to `handler` (the log is where agents
    created at runtime persist)."""
    from smolit.infra.kafka.reader import TopicMissing, read_topic_events

    try:
        history = read_topic_events(w.profile.consumer("lifecycle-replay"), w.topics(Topic.AGENT_LIFECYCLE))
    except TopicMissing:
        history = []
    handler(history)


def follow_lifecycle(w: Wiring, service: str, handler: Handler) -> ConsumerLoop:
    """Replay the agent-lifecycle topic into `handler` now (so the service starts with every agent created so
    far), then return the loop that follows it. Each instance reads under its own group from the start: re-applying
    an event is a no-op."""
    replay_lifecycle(w, handler)
    return lifecycle_loop(w, service, handler)


def lifecycle_loop(w: Wiring, service: str, handler: Handler) -> ConsumerLoop:
    """The loop of `follow_lifecycle` alone (for a `Deferred` handler that replays before it is set)."""
    return w.loop(f"{service}-lifecycle-{w.instance}", [Topic.AGENT_LIFECYCLE], handler, dedupe=False)


class Deferred:
    """A consumer loop's handler given later: the loop joins its group (seconds on the embedded broker) while the
    service is still being built (torch import, models), so a restart pays the longer of the two, not their sum.
    Events that arrive first wait in the loop's thread until the handler is set."""

    def __init__(self) -> None:
        self._handler: Handler | None = None
        self._set = threading.Event()

    def set(self, handler: Handler) -> None:
        self._handler = handler
        self._set.set()

    def __call__(self, events: Sequence[Event]) -> Sequence[Outgoing]:
        self._set.wait()
        assert self._handler is not None
        return self._handler(events)


def follow_topics(w: Wiring, service: str, topics: list[Topic], handler: Handler) -> ConsumerLoop:
    """`follow_lifecycle` over several topics: each replayed whole into `handler` now, then followed."""
    from smolit.infra.kafka.reader import TopicMissing, read_topic_events

    for topic in topics:
        try:
            handler(read_topic_events(w.profile.consumer(f"{service}-replay"), w.topics(topic)))
        except TopicMissing:
            handler([])
    return w.loop(f"{service}-lifecycle-{w.instance}", topics, handler, dedupe=False)


def connect(settings: Settings, service: str) -> tuple[KafkaProfile, ConnectionPool]:
    """Broker profile and database pool after the start-up checks, each failing as one SetupError line.

    Checked in order: both addresses are set, the broker answers, the database accepts the credentials, its
    schema is the version this build migrates to, and every Smolit topic exists. Services never create topics or
    migrate: `smolit init` (or `smolit up`) does, once, so N replicas never race on either.
    """
    bootstrap = settings.kafka_bootstrap
    if bootstrap is None or settings.database_url is None:
        raise SetupError(
            f"`smolit run {service}` needs SMOLIT_KAFKA_BOOTSTRAP and SMOLIT_DATABASE_URL"
            " (or use `smolit up`, which starts the embedded broker and database)"
        )
    profile = KafkaProfile(bootstrap, embedded=settings.tansu_profile, fetch_wait_ms=settings.tansu_fetch_wait_ms)
    try:
        check_broker(profile.admin(), timeout_s=10)
    except Exception as exc:
        raise SetupError(f"Kafka broker at {bootstrap} is not reachable (setting SMOLIT_KAFKA_BOOTSTRAP)") from exc
    where = redact(settings.database_url)
    try:
        check_database(settings.database_url, timeout_s=10)
        check_schema(settings.database_url, timeout_s=10)
    except DatabaseUnreachable as exc:
        raise SetupError(f"cannot connect to the database at {where} (setting SMOLIT_DATABASE_URL): {exc}") from exc
    except SchemaMismatch as exc:
        raise SetupError(f"database at {where} (setting SMOLIT_DATABASE_URL): {exc}") from exc
    missing = missing_topics(profile.admin(), TopicNames(settings.topic_prefix), timeout_s=10)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise SetupError(
            f"Kafka broker at {bootstrap} has no topic {shown} (settings SMOLIT_TOPIC_PREFIX={settings.topic_prefix},"
            " SMOLIT_KAFKA_BOOTSTRAP): create the topics with `smolit init`"
        )
    try:
        pool = open_pool(settings.database_url, settings.db_pool_max)
    except Exception as exc:
        raise SetupError(f"cannot connect to the database at {where} (setting SMOLIT_DATABASE_URL): {exc}") from exc
    return profile, pool


@contextmanager
def wiring(settings: Settings, service: str) -> Iterator[Wiring]:
    profile, pool = connect(settings, service)
    try:
        producer = EventProducer(profile.producer(), TopicNames(settings.topic_prefix))
    except BaseException:
        pool.close()
        raise
    registry = CollectorRegistry()
    instance = f"{socket.gethostname()}-{os.getpid()}"
    try:
        yield Wiring(
            settings,
            profile,
            TopicNames(settings.topic_prefix),
            producer,
            pool,
            registry,
            ConsumerMetrics.create(registry),
            instance,
        )
    finally:
        producer.close()
        pool.close()


def run_consumers(
    w: Wiring,
    service: str,
    loops: list[ConsumerLoop],
    stop: threading.Event,
    port: int,
    sweeper: DeadlineSweeper | None = None,
    started: list[threading.Thread] | None = None,
) -> None:
    """Run `loops` (their threads, if `started` already) until `stop`; the heartbeat says ready once each has its
    partitions."""
    bound = serve_metrics(w.registry, w.settings.host, port)
    heartbeat = Heartbeat(w.pool, service, w.instance)
    heartbeat.info = {"metrics_port": bound}
    threads = started if started is not None else [loop.start_thread() for loop in loops]
    for loop in loops:
        loop.assigned.wait(30)
    if sweeper is not None:
        threads.append(sweeper.start_thread())
    heartbeat.start()
    log.info("service ready", metrics_port=bound)
    try:
        while not stop.wait(0.5):
            if not all(t.is_alive() for t in threads):
                raise SetupError(f"{service}: a consumer loop stopped unexpectedly (see the log above)")
    finally:
        heartbeat.stop()
        if sweeper is not None:
            sweeper.stop()
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join(15)


class SerialEmbedder:
    """One embedder shared by several consumer threads, one call at a time (the tokenizer keeps per-call state)."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Any:
        with self._lock:
            return self._embedder.embed(texts)


def check_broker_quickly(profile: KafkaProfile) -> None:
    check_broker(profile.admin(), timeout_s=3)


def poll_forever(producer: EventProducer, stop: threading.Event) -> None:
    while not stop.is_set():
        producer.poll(0.1)


def open_model_registry(settings: Settings, experiment: str = "smolit-router") -> ModelRegistry:
    """The MLflow registry the settings name, or one SetupError line for the CLI."""
    from smolit.infra.registry import open_registry

    try:
        return open_registry(settings.tracking_uri, settings.data_dir, experiment)
    except Exception as exc:
        raise SetupError(
            f"model registry at {settings.tracking_uri} is not usable (setting SMOLIT_MLFLOW_TRACKING_URI): {exc}"
        ) from exc


def redact(url: str) -> str:
    """Hide a password in a database URL for error messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
