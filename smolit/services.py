"""Process wiring for one service: router, agents, streams or gateway (`smolit run SERVICE`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import structlog
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.contracts import AgentCard, Event, Topic, TopicNames
from smolit.infra.agent_gauges import AgentGaugeProjection, AgentGauges
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
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
from smolit.infra.logging import configure_logging
from smolit.infra.metrics import ConsumerMetrics, serve_metrics
from smolit.infra.settings import Settings

from .errors import SetupError

if TYPE_CHECKING:
    from smolit.agents import DeadlineSweeper
    from smolit.learner import Learner
    from smolit.router import Router
    from smolit.router.network import NetworkScorer
    from smolit.streams import StreamsConfig

Service = Literal["router", "agents", "streams", "gateway", "learner"]
SERVICES: tuple[Service, ...] = ("router", "agents", "streams", "gateway", "learner")
#: Setting that holds each service's Prometheus port (the gateway serves /metrics on its HTTP port).
METRICS_PORT_SETTING: dict[Service, str] = {
    "router": "router_metrics_port",
    "agents": "agents_metrics_port",
    "streams": "streams_metrics_port",
    "gateway": "port",
    "learner": "learner_metrics_port",
}
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
    group = f"smolit-{service}-lifecycle-{w.instance}"
    return w.loop(group, [Topic.AGENT_LIFECYCLE], handler, dedupe=False)


def follow_topics(w: Wiring, service: str, topics: list[Topic], handler: Handler) -> ConsumerLoop:
    """`follow_lifecycle` over several topics: each replayed whole into `handler` now, then followed."""
    from smolit.infra.kafka.reader import TopicMissing, read_topic_events

    for topic in topics:
        try:
            handler(read_topic_events(w.profile.consumer(f"{service}-replay"), w.topics(topic)))
        except TopicMissing:
            handler([])
    return w.loop(f"smolit-{service}-lifecycle-{w.instance}", topics, handler, dedupe=False)


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
    profile = KafkaProfile(bootstrap, embedded=settings.tansu_profile)
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


def run_service(service: Service, settings: Settings) -> None:
    """Run one service until SIGINT/SIGTERM."""
    configure_logging(settings.log_level, settings.log_json)
    limit_threads(settings.threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with wiring(settings, service) as w:
        runner: Callable[[Wiring, threading.Event], None] = {
            "router": _run_router,
            "agents": _run_agents,
            "streams": _run_streams,
            "gateway": _run_gateway,
            "learner": _run_learner,
        }[service]
        structlog.contextvars.bind_contextvars(service=service)
        runner(w, stop)


def _run_consumers(
    w: Wiring,
    service: str,
    loops: list[ConsumerLoop],
    stop: threading.Event,
    port: int,
    sweeper: DeadlineSweeper | None = None,
) -> None:
    bound = serve_metrics(w.registry, w.settings.host, port)
    heartbeat = Heartbeat(w.pool, service, w.instance)
    heartbeat.info = {"metrics_port": bound}
    threads = [loop.start_thread() for loop in loops]
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


def _run_router(w: Wiring, stop: threading.Event) -> None:
    from smolit.infra.embedder import build_embedder
    from smolit.infra.kafka import TopicMissing, read_topic_events
    from smolit.router import AgentStates, ModelWatcher, Router, RouterMetrics

    try:
        states = AgentStates(w.settings.fallback_agent, w.settings.flag_demotion)
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    # Flags and retirements known before the first request is routed (the loop below then follows the topic).
    with contextlib.suppress(TopicMissing):
        states.handle(read_topic_events(w.profile.consumer("router-lifecycle"), w.topics(Topic.AGENT_LIFECYCLE)))
    router = Router(
        load_cards(w.settings.agents_dir),
        build_embedder(w.settings),
        fallback=w.settings.fallback_agent,
        threshold=w.settings.route_threshold,
        metrics=RouterMetrics.create(w.registry),
        exploration=w.settings.exploration,
        states=states,
    )
    catalog = CardCatalog(load_cards(w.settings.agents_dir), lambda cards, _: router.use_cards(cards))

    def lifecycle(events: Sequence[Event]) -> list[Outgoing]:
        catalog.handle(events)  # agents created or updated at runtime
        return states.handle(events)  # flags and retirements (demotion)

    agents = follow_lifecycle(w, "router", lifecycle)  # replayed before the first request, then followed
    watcher = ModelWatcher(router, _champion_loader(w.settings, router), _version_loader(w.settings, router))
    watcher.refresh()  # route with the registry's champion from the first request, if there is one
    # A running A/B test is known before the first request (its group may have committed past `ExperimentStarted`).
    with contextlib.suppress(TopicMissing):
        watcher.handle(read_topic_events(w.profile.consumer("router-experiments"), w.topics(Topic.ROUTER_MODELS)))
    loop = w.loop("smolit-router", [Topic.REQUESTS], router.handle)
    # Every router instance must hear every promotion and every flag, so each reads those topics under its own group.
    models = w.loop(f"smolit-router-models-{w.instance}", [Topic.ROUTER_MODELS], watcher.handle, dedupe=False)
    _run_consumers(w, "router", [loop, models, agents], stop, w.settings.router_metrics_port)


def _champion_loader(settings: Settings, router: Router) -> Callable[[], NetworkScorer | None]:
    from smolit.infra.registry import CHAMPION, open_registry
    from smolit.router.network import NetworkScorer

    registry = open_registry(settings.tracking_uri, settings.data_dir)
    name = settings.router_registry_name

    def load() -> NetworkScorer | None:
        version = registry.version_for(name, CHAMPION)
        if version is None:
            return None
        if router.network is not None and router.network.version == version:
            return router.network
        return NetworkScorer(registry.load(name, version), router.features, version)

    return load


def _version_loader(settings: Settings, router: Router) -> Callable[[str], NetworkScorer]:
    """Loads one registry version over the router's current agents (an A/B test's treatment arm)."""
    from smolit.infra.registry import open_registry
    from smolit.router.network import NetworkScorer

    registry = open_registry(settings.tracking_uri, settings.data_dir)
    name = settings.router_registry_name
    return lambda version: NetworkScorer(registry.load(name, version), router.features, version)


def _run_learner(w: Wiring, stop: threading.Event) -> None:
    import torch

    from smolit.infra.embedder import build_embedder
    from smolit.infra.registry import open_registry
    from smolit.learner import Learner, LearnerConfig, LearnerMetrics
    from smolit.router.features import AgentFeatures

    s = w.settings
    torch.set_num_threads(s.threads)
    embedder = _Serial(build_embedder(s))  # two lifecycle loops embed cards, each in its own thread
    learner = Learner(
        AgentFeatures.from_cards(load_cards(s.agents_dir), embedder),
        open_registry(s.tracking_uri, s.data_dir),
        LearnerMetrics.create(w.registry),
        LearnerConfig(
            registry_name=s.router_registry_name,
            train_every=s.learner_train_every,
            train_every_s=s.learner_train_every_s,
            steps_per_example=s.learner_steps_per_example,
            holdout_share=s.learner_holdout_share,
            holdout_size=s.learner_holdout_size,
            min_holdout=s.learner_min_holdout,
            promotion_margin=s.learner_promotion_margin,
            target_precision=s.learner_target_precision,
            seed=s.learner_seed,
            rollback_min_outcomes=s.learner_rollback_min_outcomes,
            rollback_alpha=s.learner_rollback_alpha,
        ),
    )
    loop = w.loop("smolit-learner", [Topic.TRAINING_EXAMPLES], learner.handle)
    flags = w.loop("smolit-learner-flags", [Topic.TRAINING_EXAMPLES, Topic.AGENT_LIFECYCLE], _flag_monitor(w).handle)
    timer = threading.Thread(target=_tick_learner, args=(learner, w.producer, stop), name="learner-timer", daemon=True)
    timer.start()
    # Agents created at runtime: the learner trains on their outcomes too.
    catalog = CardCatalog(
        load_cards(s.agents_dir), lambda cards, _: learner.use_agents(AgentFeatures.from_cards(cards, embedder))
    )
    agents = follow_lifecycle(w, "learner", catalog.handle)
    _run_consumers(w, "learner", [loop, flags, agents, *_proposer_loops(w, embedder)], stop, s.learner_metrics_port)


def _proposer_loops(w: Wiring, embedder: Any) -> list[ConsumerLoop]:
    """New domains -> new agents: low-confidence decisions clustered, proposals (or agents, in auto mode) out."""
    from smolit.infra.knowledge import KnowledgeStore
    from smolit.learner import AgentProposer, Discovery, ProposerMetrics

    s = w.settings
    if s.discovery == "off":
        return []
    store = KnowledgeStore(w.pool, s.hnsw_ef_search)
    proposer = AgentProposer(
        Discovery(discovery_config(s)),
        load_cards(s.agents_dir),
        embedder,
        ProposerMetrics.create(w.registry),
        mode=s.discovery,
        knowledge=lambda c: store.pool_sources(c, s.discovery_knowledge_min_score, s.discovery_knowledge_max),
    )
    lifecycle = follow_lifecycle(w, "proposer", proposer.handle_lifecycle)
    return [w.loop("smolit-proposer", [Topic.DECISIONS], proposer.handle_decisions), lifecycle]


def discovery_config(settings: Settings) -> Any:
    from smolit.learner import DiscoveryConfig

    return DiscoveryConfig(
        window=settings.discovery_window,
        min_size=settings.discovery_min_size,
        min_cohesion=settings.discovery_min_cohesion,
        clone_similarity=settings.discovery_clone_similarity,
        duplicate_similarity=settings.discovery_duplicate_similarity,
    )


def _flag_monitor(w: Wiring) -> Any:
    """The learner's flag rule over every agent but the fallback, primed with the lifecycle log's flags."""
    from smolit.infra.kafka import TopicMissing, read_topic_events
    from smolit.infra.registry import open_registry
    from smolit.learner import FlagMetrics, FlagMonitor, FlagRule, MlflowAgentVersions, MonitorConfig
    from smolit.learner.improvement import AGENT_EXPERIMENT

    s = w.settings
    try:
        rule = FlagRule(
            min_samples=s.flag_min_samples,
            window=s.flag_window,
            flag_rate=s.flag_rate,
            unflag_rate=s.unflag_rate,
            margin=s.flag_margin,
            z=s.flag_z,
        )
    except ValueError as exc:
        raise SetupError(f"flag settings (SMOLIT_FLAG_*, SMOLIT_UNFLAG_RATE): {exc}") from exc
    monitor = FlagMonitor(
        load_cards(s.agents_dir),
        MonitorConfig(
            rule=rule,
            exempt=frozenset({s.fallback_agent}),
            default_top_k=s.retrieval_top_k,
            retire_rate=s.flag_retire_rate,
            challenger_share=s.challenger_share if s.challenger_share < 1 else None,
        ),
        FlagMetrics.create(w.registry),
        MlflowAgentVersions(open_registry(s.tracking_uri, s.data_dir, AGENT_EXPERIMENT)),
    )
    # The consumer group resumes after its committed offset: earlier flags come from a full read of the topic.
    with contextlib.suppress(TopicMissing):
        monitor.prime(read_topic_events(w.profile.consumer("learner-flags"), w.topics(Topic.AGENT_LIFECYCLE)))
    return monitor


def _tick_learner(learner: Learner, producer: EventProducer, stop: threading.Event) -> None:
    """Time-based candidates (few examples arrived): published here since no consumed batch carries them."""
    while not stop.wait(1.0):
        try:
            outgoing = learner.tick()
        except Exception:
            log.exception("learner timer failed; the next batch retries")
            continue
        for out in outgoing:
            producer.send(out)
        if outgoing:
            producer.flush()


def _run_agents(w: Wiring, stop: threading.Event) -> None:
    from smolit.agents import (
        AgentMetrics,
        AgentRuntime,
        DeadlineSweeper,
        ParkingLot,
        SubqueryPolicy,
        Trials,
        catalog_listener,
        follow_cards,
    )
    from smolit.agents.tools import ToolRunner
    from smolit.infra.knowledge import KnowledgeStore
    from smolit.infra.llm import CompletionCache, build_llms

    s = w.settings
    cards = load_cards(s.agents_dir)
    llms = build_llms(s)
    wanted = {s.llm_backend} | {c.llm.backend for c in cards.values() if c.llm.backend}
    wanted |= {c.llm.fallback_backend for c in cards.values() if c.llm.fallback_backend}
    wanted |= {s.llm_fallback_backend} if s.llm_fallback_backend else set()
    if missing := sorted(wanted - llms.keys()):
        raise SetupError(
            f"LLM backend {', '.join(missing)} is asked for but not configured"
            " (set SMOLIT_OPENAI_BASE_URL and/or SMOLIT_OPENAI_API_KEY)"
        )
    tools = ToolRunner(w.pool, timeout_s=s.tool_timeout_s)
    if unknown := tools.unknown(cards):
        raise SetupError(f"agent cards name tools that do not exist: {', '.join(unknown)} (see agents/tools.py)")
    runtime = AgentRuntime(
        cards,
        KnowledgeStore(w.pool, s.hnsw_ef_search),
        llms,
        default_backend=s.llm_backend,
        default_top_k=s.retrieval_top_k,
        metrics=AgentMetrics.create(w.registry),
        llm_attempts=s.llm_attempts,
        fallback_backend=s.llm_fallback_backend,
        cache=CompletionCache(s.llm_cache_size) if s.llm_cache_size else None,
        parking=ParkingLot(w.pool),
        policy=SubqueryPolicy(
            max_depth=s.subquery_max_depth,
            budget=s.subquery_budget,
            timeout_s=s.subquery_timeout_s,
            consult_threshold=s.consult_threshold,
        ),
        embedder=_LazyEmbedder(s) if _tool_calls_possible(s, cards) else None,
        tools=tools,
        trials=(trials := Trials()),
    )
    catalog = CardCatalog(cards, catalog_listener(runtime, KnowledgeStore(w.pool, s.hnsw_ef_search)))
    # Cards and trials (challengers, agent A/B tests) known before the first task: both topics replayed, then followed.
    agents = follow_topics(
        w, "agents", [Topic.AGENT_LIFECYCLE, Topic.ROUTER_MODELS], follow_cards(catalog.handle, trials)
    )
    # Subanswers arrive on the answers topic; the runtime ignores the final answers there.
    loop = w.loop("smolit-agents", [Topic.TASKS, Topic.SUBQUERIES, Topic.ANSWERS], runtime.handle)
    sweeper = DeadlineSweeper(runtime.sweep, runtime.delivered, w.producer, s.subquery_sweep_s)
    _run_consumers(w, "agents", [loop, agents], stop, s.agents_metrics_port, sweeper)


def _tool_calls_possible(settings: Settings, cards: dict[str, AgentCard]) -> bool:
    """Only generative backends call the consult_agent tool, and only agents that may consult someone."""
    return any(c.consults and (c.llm.backend or settings.llm_backend) == "openai" for c in cards.values())


class _Serial:
    """One embedder shared by several consumer threads, one call at a time (the tokenizer keeps per-call state)."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Any:
        with self._lock:
            return self._embedder.embed(texts)


class _LazyEmbedder:
    """Loads the embedder on the first consult_agent call, so agents that never use the tool never pay for it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._embedder: Any = None
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Any:
        with self._lock:
            if self._embedder is None:
                from smolit.infra.embedder import build_embedder

                self._embedder = build_embedder(self._settings)
        return self._embedder.embed(texts)


def streams_config(settings: Settings, profile: KafkaProfile, known_agents: frozenset[str]) -> StreamsConfig:
    """The stream worker's configuration from settings (also used by the benchmark and the tests)."""
    from smolit.streams import StreamsConfig, WindowSpec

    return StreamsConfig(
        app_id=f"{settings.topic_prefix}-streams",
        faust_settings=profile.faust(),
        topics=TopicNames(settings.topic_prefix),
        partitions=settings.topic_partitions,
        spec=WindowSpec(
            tumbling_s=settings.streams_tumbling_s,
            hopping_s=settings.streams_hopping_s,
            hop_s=settings.streams_hop_s,
            lateness_s=settings.streams_lateness_s,
        ),
        feedback_ttl_s=settings.streams_feedback_ttl_s,
        idle_advance_s=settings.streams_idle_advance_s,
        batch_size=settings.streams_batch_size,
        known_agents=known_agents,
        fetch_wait_ms=profile.faust_fetch_wait_ms,
    )


def _run_streams(w: Wiring, stop: threading.Event) -> None:
    import faust

    from smolit.streams import StreamMetrics, StreamsApp

    # Agents created at runtime so far count under their names; ones created while this worker runs count under
    # `unknown` until its next start (the faust topology's catalogue is fixed when it starts).
    catalog = CardCatalog(load_cards(w.settings.agents_dir))
    replay_lifecycle(w, catalog.handle)
    known = frozenset(catalog) | {w.settings.fallback_agent}
    bound = serve_metrics(w.registry, w.settings.host, w.settings.streams_metrics_port)
    heartbeat = Heartbeat(w.pool, "streams", w.instance)
    heartbeat.info = {"metrics_port": bound}

    def ready() -> None:
        heartbeat.start()
        log.info("service ready", metrics_port=bound)

    if w.settings.log_level.upper() != "DEBUG":  # faust, mode and aiokafka narrate every start-up step at INFO
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)
    streams = StreamsApp(streams_config(w.settings, w.profile, known), StreamMetrics.create(w.registry), ready)
    # faust runs its own event loop in this thread and handles SIGINT/SIGTERM itself (clean stop: flush, commit).
    worker = faust.Worker(streams.app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    finally:
        heartbeat.stop()


def _run_gateway(w: Wiring, stop: threading.Event) -> None:
    import uvicorn

    from smolit.gateway import AnswerProjection, GatewayDeps, PendingRequests, create_app

    pending = PendingRequests()
    # Each gateway instance must see every answer, so its group is its own; committed offsets let it resume.
    group = f"smolit-gateway-{w.settings.gateway_instance}"
    loop = w.loop(group, [Topic.DECISIONS, Topic.ANSWERS], AnswerProjection(w.pool, pending).handle, dedupe=False)
    # Stream metrics and agent flags as gauges on this /metrics: a fresh group per process re-reads both topics
    # from the start, so the gauges hold the last value per agent again after a restart (no compaction needed).
    gauges = AgentGaugeProjection(AgentGauges.create(w.registry))
    gauge_loop = w.loop(
        f"smolit-gauges-{w.instance}", [Topic.AGENT_METRICS, Topic.AGENT_LIFECYCLE], gauges.handle, dedupe=False
    )
    # Agents created at runtime join the model list (/v1/models) and the agents a request may name.
    cards = CardCatalog(load_cards(w.settings.agents_dir))
    catalog_loop = follow_lifecycle(w, "gateway", cards.handle)
    app = create_app(
        GatewayDeps(
            producer=w.producer,
            pool=w.pool,
            pending=pending,
            cards=cards,
            registry=w.registry,
            broker_check=lambda: _check_broker_quickly(w.profile),
            request_timeout_s=w.settings.request_timeout_s,
            max_request_chars=w.settings.max_request_chars,
            auth=_authenticator(w, cards),
            guard=_prompt_guard(w),
            retired=lambda: gauges.retired,
        )
    )
    thread = loop.start_thread()
    gauge_thread = gauge_loop.start_thread()
    catalog_thread = catalog_loop.start_thread()
    loop.assigned.wait(30)
    poller = threading.Thread(target=_poll_forever, args=(w.producer, stop), name="producer-poll", daemon=True)
    poller.start()
    heartbeat = Heartbeat(w.pool, "gateway", w.instance)
    heartbeat.start()
    config = uvicorn.Config(app, host=w.settings.host, port=w.settings.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    def exit_on_stop() -> None:
        stop.wait()
        server.should_exit = True

    watcher = threading.Thread(target=exit_on_stop, daemon=True)
    watcher.start()
    log.info("gateway ready", url=f"http://{w.settings.host}:{w.settings.port}")
    try:
        server.run()
    finally:
        stop.set()
        heartbeat.stop()
        loop.stop()
        gauge_loop.stop()
        catalog_loop.stop()
        thread.join(15)
        gauge_thread.join(15)
        catalog_thread.join(15)


def _authenticator(w: Wiring, cards: Mapping[str, AgentCard]) -> Any:
    from smolit.gateway.auth import Authenticator
    from smolit.gateway.ratelimit import RateLimiter
    from smolit.infra.keys import KeyStore

    s = w.settings
    auth = Authenticator.for_settings(
        mode=s.auth,
        host=s.host,
        keys=KeyStore(w.pool),
        limiter=RateLimiter(s.rate_limit_per_s, s.rate_limit_burst),
        cards=cards,
    )
    log.info("gateway auth", mode=s.auth, keys_required=auth.required, rate_limit_per_s=s.rate_limit_per_s)
    if auth.required and not KeyStore(w.pool).list(include_revoked=False):
        log.warning("API keys are required but none exists: every request answers 401; run `smolit keys create`")
    return auth


def _prompt_guard(w: Wiring) -> Any:
    from smolit.gateway.guard import GuardMetrics, PromptGuard
    from smolit.gateway.prompt_filter import OpenAIModeration, PromptFilter

    s = w.settings
    if s.prompt_filter == "off":
        return None
    embedder = None
    if s.prompt_filter == "on":
        from smolit.infra.embedder import build_embedder

        embedder = build_embedder(s)  # ~3 ms per request text (README: prompt filter)
    moderation = None
    if s.moderation == "openai":
        import openai

        if not (s.openai_base_url or s.openai_api_key):
            raise SetupError("SMOLIT_MODERATION=openai needs SMOLIT_OPENAI_BASE_URL and/or SMOLIT_OPENAI_API_KEY")
        key = s.openai_api_key.get_secret_value() if s.openai_api_key else "not-needed"
        client = openai.OpenAI(base_url=s.openai_base_url, api_key=key, timeout=s.llm_timeout_s, max_retries=1)
        moderation = OpenAIModeration(client, s.moderation_model)
    flt = PromptFilter(embedder, threshold=s.prompt_filter_threshold, moderation=moderation)
    return PromptGuard(flt, w.producer, GuardMetrics.create(w.registry))


def _check_broker_quickly(profile: KafkaProfile) -> None:
    check_broker(profile.admin(), timeout_s=3)


def _poll_forever(producer: EventProducer, stop: threading.Event) -> None:
    while not stop.is_set():
        producer.poll(0.1)


def redact(url: str) -> str:
    """Hide a password in a database URL for error messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
