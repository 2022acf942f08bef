"""The one consumer loop: decode → dedupe → handle → produce → mark processed → commit.

Policy, in one place:
- undecodable or schema-invalid messages go to the dead-letter topic with the reason (`DecodeError`);
- a handler raising `RetryableError` is retried with exponential backoff, a bounded number of times, then the
  messages go to the dead-letter topic;
- any other handler exception is isolated to its message (the batch is re-run one message at a time) and that
  message is dead-lettered; the rest are still processed;
- outputs are flushed to the broker before the input offsets are committed (at-least-once), and processed event ids
  are recorded so a redelivered event is handled once;
- the database being unreachable (an outage, not a bad message) never dead-letters anything: the batch waits and
  is retried until the database is back, and nothing is committed meanwhile;
- a failed offset commit (broker restarting) keeps the offsets for the next commit instead of stopping the loop.

Observability: one canonical `event handled` log line per consumed message (outcome `ok`, `duplicate` or
`dead_lettered`, with the request id, event type and agent), and a consumer-lag gauge per assigned partition
refreshed every `lag_interval_s` from locally cached high watermarks (no broker round trip on the hot path).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID, uuid4

import psycopg
import structlog
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition
from psycopg_pool import PoolTimeout
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from smolit.contracts import DeadLetter, DecodeError, Event, Topic, decode
from smolit.contracts.serde import HEADER_EVENT_ID

from ..logging import event_fields
from ..metrics import ConsumerMetrics
from .dedupe import Deduper
from .producer import EventProducer, Outgoing, ProduceError

log = structlog.get_logger("smolit.consumer")

Handler = Callable[[Sequence[Event]], Sequence[Outgoing]]
"""Handles a batch of events and returns what to publish. Pure with respect to Kafka: it never produces."""


class RetryableError(Exception):
    """A transient failure (database down, LLM timeout): retry the batch with backoff."""


_OUTAGES = (psycopg.OperationalError, PoolTimeout)


def is_outage(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) means the database is unreachable: the batch is fine, retry it later."""
    while exc is not None:
        if isinstance(exc, _OUTAGES):
            return True
        exc = exc.__cause__
    return False


@dataclass
class LoopConfig:
    group: str
    topics: list[str]
    batch_size: int = 64
    poll_timeout_s: float = 0.05
    max_attempts: int = 4
    backoff_s: float = 0.2
    dedupe: bool = True
    commit_interval_s: float = 0.2
    """Processed offsets are committed at most this often while busy, and at once when the loop goes idle."""
    lag_interval_s: float = 5.0
    """How often the consumer-lag gauge is refreshed."""


@dataclass
class _Batch:
    events: list[tuple[Message, Event]] = field(default_factory=list)
    outputs: list[Outgoing] = field(default_factory=list)
    dead: list[tuple[Message, str]] = field(default_factory=list)


class ConsumerLoop:
    """Runs a batch handler over a consumer group until `stop()`."""

    def __init__(
        self,
        consumer_config: dict[str, object],
        config: LoopConfig,
        handler: Handler,
        producer: EventProducer,
        deduper: Deduper | None,
        metrics: ConsumerMetrics,
    ) -> None:
        self.config = config
        self._consumer_config = consumer_config
        self._handler = handler
        self._producer = producer
        self._deduper = deduper if config.dedupe else None
        self._metrics = metrics
        self._stop = threading.Event()
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._last_commit = time.monotonic()
        self._last_lag = float("-inf")
        self.assigned = threading.Event()
        """Set once the group has given this member its partitions (Tansu joins take seconds)."""

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        consumer = Consumer(self._consumer_config)
        consumer.subscribe(self.config.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("consumer started", group=self.config.group, topics=self.config.topics)
        try:
            while not self._stop.is_set():
                messages = consumer.consume(self.config.batch_size, self.config.poll_timeout_s)
                records = [m for m in messages if not self._is_event_error(m)]
                if time.monotonic() - self._last_lag >= self.config.lag_interval_s:
                    self._update_lag(consumer)
                if records:
                    self._process(records)
                # Coalesced commits: every commit is a broker write (an S3 object on the embedded broker).
                if not records or time.monotonic() - self._last_commit >= self.config.commit_interval_s:
                    self._commit(consumer)
            self._commit(consumer)
        finally:
            consumer.close()
            log.info("consumer stopped", group=self.config.group)

    def start_thread(self) -> threading.Thread:
        # The thread inherits the caller's bound log context (e.g. `service`), which threads do not by default.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(self.run,), name=f"consumer-{self.config.group}", daemon=True
        )
        thread.start()
        return thread

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(consumer)  # hand over processed work before another member takes the partitions
        for tp in partitions:  # another member reports their lag now
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(self.config.group, tp.topic, str(tp.partition))

    def _update_lag(self, consumer: Consumer) -> None:
        """Lag = high watermark − position per assigned partition, from the client's cached watermarks."""
        self._last_lag = time.monotonic()
        try:
            positions = consumer.position(consumer.assignment())
            # Nothing consumed yet on a partition: its committed offset is where this member will start.
            unknown = [tp for tp in positions if tp.offset < 0]
            starts: dict[tuple[str, int], int] = {}
            if unknown:
                starts = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(unknown, timeout=2)}
            for tp in positions:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue  # no fetch response for this partition yet
                position = tp.offset if tp.offset >= 0 else starts.get((tp.topic, tp.partition), OFFSET_INVALID)
                if position < 0:
                    position = max(low, 0)  # no commit either: the group reads from the earliest offset
                lag = max(high - position, 0)
                self._metrics.lag.labels(self.config.group, tp.topic, str(tp.partition)).set(lag)
        except KafkaException as exc:  # a metrics refresh never stops the loop
            log.debug("lag refresh failed", group=self.config.group, error=str(exc))

    def _commit(self, consumer: Consumer) -> None:
        self._last_commit = time.monotonic()
        if not self._uncommitted:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._uncommitted.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = isinstance(err, KafkaError) and err.retriable()
            log.warning("commit failed", group=self.config.group, error=str(exc), kept_for_retry=retriable)
            if retriable:
                return  # the broker is restarting: the next commit carries these offsets
            # The partitions moved to another member: it starts from the last commit (at-least-once).
        self._uncommitted.clear()

    def _is_event_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error", group=self.config.group, error=err.str())
        return True

    # ---- one batch ----------------------------------------------------------------------------------------

    def _process(self, messages: list[Message]) -> None:
        """Handle, publish (acknowledged), mark processed; only then do the offsets become committable."""
        started = time.perf_counter()
        delay = self.config.backoff_s
        while True:
            try:
                batch = self.process(messages)
                self._publish(batch)
                if self._deduper is not None and batch.events:
                    self._deduper.mark(self.config.group, [e.event_id for _, e in batch.events])
                break
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._metrics.retries.labels(self.config.group).inc()
                log.warning(
                    "database unavailable; the batch waits and is retried",
                    group=self.config.group,
                    error=" ".join(str(exc).split())[:200],
                    retry_in_s=delay,
                )
                if self._stop.wait(delay):
                    return  # stopping: not committed, so the batch is delivered again after the restart
                delay = min(delay * 2, 5.0)
        for tp in _next_offsets(messages):
            self._uncommitted[(tp.topic, tp.partition)] = tp.offset
        elapsed = time.perf_counter() - started
        self._metrics.batch_seconds.labels(self.config.group).observe(elapsed)
        self._log_handled(batch, len(messages), elapsed)

    def _log_handled(self, batch: _Batch, size: int, elapsed_s: float) -> None:
        """The canonical line per message; events of one batch share its duration (handlers work per batch)."""
        common = {"group": self.config.group, "batch": size, "duration_ms": round(elapsed_s * 1000, 2)}
        dead = {(m.topic(), m.partition(), m.offset()): reason for m, reason in batch.dead}
        for msg, event in batch.events:
            reason = dead.pop((msg.topic(), msg.partition(), msg.offset()), None)
            if reason is None:
                log.info("event handled", **event_fields(event), outcome="ok", **common)
            else:
                log.warning("event handled", **event_fields(event), outcome="dead_lettered", reason=reason, **common)
        for (topic, partition, offset), reason in dead.items():  # undecodable: no event to describe
            log.warning(
                "event handled",
                topic=topic,
                partition=partition,
                offset=offset,
                outcome="dead_lettered",
                reason=reason,
                **common,
            )

    def process(self, messages: list[Message]) -> _Batch:
        """Decode, dedupe and handle a batch; returns outputs and dead letters (nothing is produced yet)."""
        batch = _Batch()
        fresh: list[tuple[Message, Event]] = []
        for msg in messages:
            self._metrics.consumed.labels(self.config.group, msg.topic()).inc()
            try:
                fresh.append((msg, decode(msg.value())))
            except DecodeError as exc:
                batch.dead.append((msg, f"undecodable: {exc}"))
        fresh = self._drop_duplicates(fresh)
        batch.events = fresh
        if fresh:
            self._handle(fresh, batch)
        return batch

    def _drop_duplicates(self, items: list[tuple[Message, Event]]) -> list[tuple[Message, Event]]:
        if self._deduper is None or not items:
            return items
        seen = self._deduper.seen(self.config.group, [e.event_id for _, e in items])
        unique: list[tuple[Message, Event]] = []
        for msg, event in items:
            if event.event_id in seen:
                self._metrics.duplicates.labels(self.config.group).inc()
                log.info("event handled", **event_fields(event), outcome="duplicate", group=self.config.group)
                continue
            seen.add(event.event_id)  # also drops a duplicate inside the same batch
            unique.append((msg, event))
        return unique

    def _handle(self, items: list[tuple[Message, Event]], batch: _Batch) -> None:
        # A lone event's request id, type and agent reach every line the handler logs.
        context = event_fields(items[0][1]) if len(items) == 1 else {}
        try:
            with structlog.contextvars.bound_contextvars(group=self.config.group, **context):
                batch.outputs.extend(self._call_with_retry([e for _, e in items]))
        except RetryError as exc:
            last = exc.last_attempt.exception()
            if is_outage(last):
                raise last from last.__cause__  # an outage, not a bad message: the batch waits (see _process)
            reason = f"gave up after {self.config.max_attempts} attempts: {last}"
            batch.dead.extend((msg, reason) for msg, _ in items)
        except Exception as exc:
            if is_outage(exc):
                raise
            if len(items) == 1:
                log.warning("handler failed", group=self.config.group, error=repr(exc))
                batch.dead.append((items[0][0], f"handler error: {exc!r}"))
                return
            for item in items:  # isolate the poison message: run the rest one by one
                self._handle([item], batch)

    def _call_with_retry(self, events: list[Event]) -> Sequence[Outgoing]:
        for attempt in Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait_exponential(multiplier=self.config.backoff_s, max=10),
            before_sleep=lambda _: self._metrics.retries.labels(self.config.group).inc(),
        ):
            with attempt:
                return self._handler(events)
        raise AssertionError("unreachable")  # pragma: no cover

    def _publish(self, batch: _Batch) -> None:
        for out in batch.outputs:
            self._producer.send(out)
            self._metrics.produced.labels(out.topic.value).inc()
        for msg, reason in batch.dead:
            self._producer.send(_dead_letter(msg, reason, self.config.group))
            self._metrics.dead_letters.labels(self.config.group, msg.topic()).inc()
        for attempt in Retrying(
            retry=retry_if_exception_type(ProduceError),
            wait=wait_exponential(multiplier=self.config.backoff_s, max=5),
            stop=stop_after_attempt(self.config.max_attempts),
            reraise=True,
        ):
            with attempt:
                self._producer.flush()


def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
    latest: dict[tuple[str, int], int] = {}
    for msg in messages:
        key = (msg.topic(), msg.partition())
        latest[key] = max(latest.get(key, -1), msg.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]


def _dead_letter(msg: Message, reason: str, group: str) -> Outgoing:
    return dead_letter(
        reason,
        group,
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        headers=msg.headers() or [],
    )


def dead_letter(
    reason: str,
    group: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | str | None]],
) -> Outgoing:
    """The `DeadLetter` for one message (any client), keyed by the original key."""
    text_headers = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) for k, v in headers}
    event = DeadLetter(
        correlation_id=_correlation(text_headers),
        producer=group,
        error=reason[:2000],
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        consumer_group=group,
        raw_value=base64.b64encode(value).decode() if value is not None else None,
        raw_key=base64.b64encode(key).decode() if key is not None else None,
        headers=text_headers,
    )
    out_key = key.decode("utf-8", "replace") if key else str(event.event_id)
    return Outgoing(Topic.DLQ, out_key, event)


def _correlation(headers: dict[str, str]) -> UUID:
    """The poison message's own event id when its headers carry one, else a fresh id."""
    try:
        return UUID(headers.get(HEADER_EVENT_ID, ""))
    except ValueError:
        return uuid4()
