"""The one consumer loop against the real embedded broker and database."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from uuid import UUID

import psycopg
import pytest
import structlog
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.contracts import AnswerProduced, DeadLetter, Event, RequestReceived, Topic, TopicNames, encode
from smolit.contracts.serde import HEADER_VERSION
from smolit.infra.kafka import (
    ConsumerLoop,
    EventProducer,
    KafkaProfile,
    LoopConfig,
    Outgoing,
    PostgresDeduper,
    RetryableError,
)
from smolit.infra.metrics import ConsumerMetrics

from ..conftest import read_events

pytestmark = pytest.mark.integration


def _request(text: str = "hello") -> RequestReceived:
    return RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text=text)


def _echo(event: Event) -> Outgoing:
    return Outgoing(
        Topic.ANSWERS,
        str(event.correlation_id),
        AnswerProduced(
            correlation_id=event.correlation_id,
            agent="echo",
            answer=event.text,  # type: ignore[attr-defined]
            backend="test",
            latency_ms=0.0,
        ),
    )


class Harness:
    def __init__(self, profile: KafkaProfile, topics: TopicNames, producer: EventProducer, pool: ConnectionPool):
        self.profile, self.topics, self.producer, self.pool = profile, topics, producer, pool
        self.group = f"g-{uuid.uuid4().hex[:8]}"
        self.registry = CollectorRegistry()
        self.metrics = ConsumerMetrics.create(self.registry)
        self._running: list[tuple[ConsumerLoop, threading.Thread]] = []

    def start(self, handler: Callable[[Sequence[Event]], Sequence[Outgoing]], **config: object) -> ConsumerLoop:
        """Start a loop in this harness's group and wait until it owns its partitions."""
        loop = ConsumerLoop(
            self.profile.consumer(self.group),
            LoopConfig(group=self.group, topics=[self.topics(Topic.REQUESTS)], backoff_s=0.01, **config),  # type: ignore[arg-type]
            handler,
            self.producer,
            PostgresDeduper(self.pool),
            self.metrics,
        )
        thread = loop.start_thread()
        assert loop.assigned.wait(30), "consumer group never assigned partitions"
        self._running.append((loop, thread))
        return loop

    def send(self, event: Event) -> None:
        self.producer.send(Outgoing(Topic.REQUESTS, "k", event))
        self.producer.flush()

    def send_raw(self, value: bytes) -> None:
        self.producer.send_raw(self.topics(Topic.REQUESTS), b"k", value)
        self.producer.flush()

    def committed(self) -> int:
        """Sum of committed offsets of this group over the requests topic."""
        consumer = Consumer(self.profile.consumer(self.group))
        parts = consumer.list_topics(self.topics(Topic.REQUESTS), timeout=10).topics[self.topics(Topic.REQUESTS)]
        offsets = consumer.committed([TopicPartition(self.topics(Topic.REQUESTS), p) for p in parts.partitions], 10)
        consumer.close()
        return sum(max(tp.offset, 0) for tp in offsets)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels | {"group": self.group}) or 0.0

    def stop(self) -> None:
        for loop, thread in self._running:
            loop.stop()
            thread.join(15)


@pytest.fixture
def harness(
    profile: KafkaProfile, topics: TopicNames, producer: EventProducer, pool: ConnectionPool
) -> Iterator[Harness]:
    h = Harness(profile, topics, producer, pool)
    yield h
    h.stop()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_offsets_are_committed_only_after_processing(harness: Harness) -> None:
    """While the handler is still working the offset stays uncommitted; it is committed once outputs are out."""
    entered, release = threading.Event(), threading.Event()

    def slow(events: Sequence[Event]) -> list[Outgoing]:
        entered.set()
        release.wait(30)
        return [_echo(e) for e in events]

    harness.start(slow)
    harness.send(_request("slow one"))
    assert entered.wait(20)
    time.sleep(0.5)
    assert harness.committed() == 0
    release.set()
    answers = read_events(harness.profile, harness.topics, Topic.ANSWERS, 1)
    assert [a.answer for a in answers] == ["slow one"]  # type: ignore[attr-defined]
    assert _wait_for(lambda: harness.committed() == 1)


def test_poison_message_goes_to_dlq_and_the_next_is_processed(harness: Harness) -> None:
    """An undecodable value is dead-lettered with its reason and the loop carries on."""
    harness.start(lambda events: [_echo(e) for e in events])
    harness.send_raw(b"{not json")
    harness.send(_request("after the poison"))
    dead = read_events(harness.profile, harness.topics, Topic.DLQ, 1)
    answers = read_events(harness.profile, harness.topics, Topic.ANSWERS, 1)
    assert isinstance(dead[0], DeadLetter)
    assert "undecodable" in dead[0].error and "not JSON" in dead[0].error
    assert dead[0].source_topic == harness.topics(Topic.REQUESTS)
    assert [a.answer for a in answers] == ["after the poison"]  # type: ignore[attr-defined]
    assert _wait_for(lambda: harness.committed() == 2)


def test_event_from_a_newer_schema_version_goes_to_dlq(harness: Harness) -> None:
    """An event whose schema_version this build does not know yet is dead-lettered with the reason, not misread."""
    harness.start(lambda events: [_echo(e) for e in events])
    value, headers = encode(_request("from the future"))
    newer = json.loads(value) | {"schema_version": 99}  # what a newer producer build writes, headers included
    headers = [(k, b"99" if k == HEADER_VERSION else v) for k, v in headers]
    harness.producer.send_raw(harness.topics(Topic.REQUESTS), b"k", json.dumps(newer).encode(), headers)
    harness.producer.flush()
    harness.send(_request("current version"))
    dead = read_events(harness.profile, harness.topics, Topic.DLQ, 1)
    answers = read_events(harness.profile, harness.topics, Topic.ANSWERS, 1)
    assert isinstance(dead[0], DeadLetter)
    assert "RequestReceived schema_version 99 is newer than this build (1)" in dead[0].error
    assert dead[0].correlation_id == UUID(newer["event_id"])  # the record keeps its identity in the DLQ
    assert dead[0].headers[HEADER_VERSION] == "99"
    assert [a.answer for a in answers] == ["current version"]  # type: ignore[attr-defined]
    assert _wait_for(lambda: harness.committed() == 2)


def test_handler_error_is_isolated_to_its_message(harness: Harness) -> None:
    """A message the handler cannot process is dead-lettered; the others in its batch still succeed."""

    def picky(events: Sequence[Event]) -> list[Outgoing]:
        if any(e.text == "boom" for e in events):  # type: ignore[attr-defined]
            raise ValueError("cannot handle boom")
        return [_echo(e) for e in events]

    harness.start(picky)
    for text in ("one", "boom", "two"):
        harness.send(_request(text))
    answers = read_events(harness.profile, harness.topics, Topic.ANSWERS, 2)
    dead = read_events(harness.profile, harness.topics, Topic.DLQ, 1)
    assert sorted(a.answer for a in answers) == ["one", "two"]  # type: ignore[attr-defined]
    assert "cannot handle boom" in dead[0].error  # type: ignore[attr-defined]


def test_duplicate_event_is_processed_once(harness: Harness) -> None:
    """The same event delivered twice reaches the handler once (dedupe by event id in PostgreSQL)."""
    calls: list[str] = []

    def counting(events: Sequence[Event]) -> list[Outgoing]:
        calls.extend(e.text for e in events)  # type: ignore[attr-defined]
        return [_echo(e) for e in events]

    harness.start(counting)
    event = _request("only once")
    harness.send(event)
    assert _wait_for(lambda: harness.committed() == 1)
    harness.send(event)
    harness.send(_request("marker"))
    assert _wait_for(lambda: harness.committed() == 3)
    assert calls == ["only once", "marker"]
    assert harness.value("smolit_duplicate_events_total") == 1


def test_retryable_errors_are_retried_then_succeed(harness: Harness) -> None:
    """A transient failure is retried with backoff and the event is processed exactly once."""
    attempts: list[int] = []

    def flaky(events: Sequence[Event]) -> list[Outgoing]:
        attempts.append(1)
        if len(attempts) < 3:
            raise RetryableError("database briefly away")
        return [_echo(e) for e in events]

    harness.start(flaky, max_attempts=4)
    harness.send(_request("eventually"))
    answers = read_events(harness.profile, harness.topics, Topic.ANSWERS, 1)
    assert [a.answer for a in answers] == ["eventually"]  # type: ignore[attr-defined]
    assert harness.value("smolit_handler_retries_total") == 2


def test_exhausted_retries_dead_letter_the_message(harness: Harness) -> None:
    """A failure that outlasts the retry budget is dead-lettered with the last error, not lost or looped forever."""

    def down(events: Sequence[Event]) -> list[Outgoing]:
        raise RetryableError("still down")

    harness.start(down, max_attempts=2)
    harness.send(_request("doomed"))
    dead = read_events(harness.profile, harness.topics, Topic.DLQ, 1)
    assert "gave up after 2 attempts" in dead[0].error and "still down" in dead[0].error  # type: ignore[attr-defined]
    assert _wait_for(lambda: harness.committed() == 1)


def test_a_database_outage_is_waited_out_not_dead_lettered(harness: Harness) -> None:
    """The database being away longer than the retry budget is an outage, not a bad message: the batch waits."""
    calls: list[int] = []

    def database_down_for_a_while(events: Sequence[Event]) -> list[Outgoing]:
        calls.append(1)
        if len(calls) <= 6:  # three times the retry budget
            try:
                raise psycopg.OperationalError("connection refused")
            except psycopg.OperationalError as exc:
                raise RetryableError("database away") from exc
        return [_echo(e) for e in events]

    harness.start(database_down_for_a_while, max_attempts=2)
    harness.send(_request("patience"))
    answers = read_events(harness.profile, harness.topics, Topic.ANSWERS, 1)
    assert [a.answer for a in answers] == ["patience"], f"handler called {len(calls)} times"  # type: ignore[attr-defined]
    assert _wait_for(lambda: harness.committed() == 1)
    assert harness.value("smolit_dead_letters_total", topic=harness.topics(Topic.REQUESTS)) == 0


def test_consumer_lag_gauge_counts_records_behind(harness: Harness) -> None:
    """With ten records waiting and the handler busy on the first, the lag gauge reports the nine behind it."""
    entered, release = threading.Event(), threading.Event()

    def slow(events: Sequence[Event]) -> list[Outgoing]:
        entered.set()
        release.wait(30)
        return [_echo(e) for e in events]

    for i in range(10):
        harness.send(_request(f"r{i}"))  # one key: one partition
    harness.start(slow, batch_size=1, lag_interval_s=0.0)
    assert entered.wait(20)

    def lag() -> float:
        return sum(
            s.value
            for m in harness.registry.collect()
            if m.name == "smolit_consumer_lag_messages"
            for s in m.samples
            if s.labels["group"] == harness.group
        )

    assert _wait_for(lambda: lag() == 9, timeout_s=5), lag()
    release.set()
    assert _wait_for(lambda: harness.committed() == 10)
    assert _wait_for(lambda: lag() == 0), lag()


def test_one_canonical_log_line_per_message(harness: Harness) -> None:
    """Each consumed message gets one `event handled` line with its outcome, request id and event type."""
    ok, boom = _request("fine"), _request("boom")

    def picky(events: Sequence[Event]) -> list[Outgoing]:
        if any(e.text == "boom" for e in events):  # type: ignore[attr-defined]
            raise ValueError("cannot handle boom")
        return [_echo(e) for e in events]

    with structlog.testing.capture_logs() as logs:
        harness.start(picky)
        harness.send(ok)
        harness.send(boom)
        harness.send(ok)  # redelivery of the same event
        harness.send_raw(b"{not json")
        assert _wait_for(lambda: harness.committed() == 4)
    handled = [entry for entry in logs if entry["event"] == "event handled" and entry.get("group") == harness.group]
    outcomes = sorted((entry.get("request_id", "-"), entry["outcome"]) for entry in handled)
    assert outcomes == sorted(
        [
            (str(ok.correlation_id), "ok"),
            (str(boom.correlation_id), "dead_lettered"),
            (str(ok.correlation_id), "duplicate"),
            ("-", "dead_lettered"),
        ]
    )
    assert all(entry.get("event_type") == "RequestReceived" for entry in handled if entry.get("request_id"))
    assert all("duration_ms" in entry for entry in handled if entry["outcome"] != "duplicate")
