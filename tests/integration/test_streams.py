"""The stream worker (`smolit run streams`, faust) against the real embedded broker, killed and restarted mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import ConnectionPool

from smolit.contracts import (
    AgentMetricsWindow,
    AnswerProduced,
    DeadLetter,
    Event,
    FeedbackGiven,
    RoutingDecided,
    SubqueryRequested,
    TaskFailed,
    Topic,
    TopicNames,
    TrainingExample,
)
from smolit.infra.embedded import free_port
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing

from ..conftest import read_events

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _decision(rid: uuid.UUID, agent: str, score: float, t: float) -> Outgoing:
    event = RoutingDecided(
        correlation_id=rid,
        occurred_at=_at(t),
        agent=agent,
        scores={agent: score, "general": 0.1},
        score=score,
        model_version="similarity-v1",
        propensity=0.9,
        latency_ms=3.0,
        embedding="AAAA",
        text=f"question {rid.hex[:6]}",
    )
    return Outgoing(Topic.DECISIONS, str(rid), event)


def _answer(rid: uuid.UUID, agent: str, latency: float, t: float, **kw: Any) -> Outgoing:
    event = AnswerProduced(
        correlation_id=rid, occurred_at=_at(t), agent=agent, answer="a", backend="extractive", latency_ms=latency, **kw
    )
    return Outgoing(Topic.ANSWERS, str(rid), event)


def _feedback(rid: uuid.UUID, user: str, rating: int, t: float) -> Outgoing:
    return Outgoing(
        Topic.FEEDBACK, str(rid), FeedbackGiven(correlation_id=rid, occurred_at=_at(t), rating=rating, user=user)
    )


class Worker:
    """`smolit run streams` as a child process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **overrides: str) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smolit", "run", "streams"],
                env=self.env | overrides,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _metric(port: int, name: str) -> float:
    """Sum of a Prometheus counter over its labels (0 while the worker is not serving yet)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _unique(events: list[Event]) -> dict[uuid.UUID, Event]:
    """Dedupe by event id as downstream consumers do; every copy of an id must be identical."""
    seen: dict[uuid.UUID, Event] = {}
    for e in events:
        if e.event_id in seen:
            assert seen[e.event_id] == e, f"two different events share id {e.event_id}"
        seen[e.event_id] = e
    return seen


def _read_until(profile: KafkaProfile, topics: TopicNames, topic: Topic, count: int, timeout_s: float) -> list[Event]:
    events: list[Event] = []

    def enough() -> bool:
        nonlocal events
        events = read_events(profile, topics, topic, 10_000, timeout_s=3)
        return len(_unique(events)) >= count

    _wait_for(enough, timeout_s, f"{count} events on {topic.value}: {[_describe(e) for e in events]}")
    return events


def _describe(e: Event) -> str:
    if isinstance(e, AgentMetricsWindow):
        return f"{e.agent}/{e.window_kind}/{(e.window_start - T0).total_seconds():.0f}: {e.requests}"
    return e.type  # type: ignore[attr-defined, no-any-return]


def _window_view(w: AgentMetricsWindow) -> dict[str, Any]:
    return {
        "requests": w.requests,
        "answers": w.answers,
        "failures": w.failures,
        "tokens": w.tokens,
        "cache_hits": w.cache_hits,
        "feedback_count": w.feedback_count,
        "subqueries_sent": w.subqueries_sent,
        "subqueries_received": w.subqueries_received,
    }


# In memory, the TTL also closes one request per tick: what falls due waits for later ticks, the windows must not.
@pytest.mark.parametrize(("store", "expire_per_tick"), [("rocksdb", "2000"), ("memory", "1")])
def test_windows_and_training_examples_survive_a_killed_worker(
    store: str,
    expire_per_tick: str,
    broker: str,
    database_url: str,
    pool: ConnectionPool,
    profile: KafkaProfile,
    topics: TopicNames,
    producer: EventProducer,
    tmp_path: Path,
) -> None:
    """A scripted stream yields exact windows and examples, though the worker is SIGKILLed and restarted mid-stream,
    with its tables on local disk (the restart reads only the newer changelog) or in memory (it reads all of it)."""
    port = free_port()
    env = dict(os.environ) | {
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "SMOLIT_STREAMS_STORE": store,
        "SMOLIT_STREAMS_EXPIRE_PER_TICK": expire_per_tick,
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu",
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "SMOLIT_TOPIC_PARTITIONS": "2",
        "SMOLIT_STREAMS_METRICS_PORT": str(port),
        "SMOLIT_STREAMS_TUMBLING_S": "60",
        "SMOLIT_STREAMS_HOPPING_S": "180",
        "SMOLIT_STREAMS_HOP_S": "60",
        "SMOLIT_STREAMS_LATENESS_S": "10",
        "SMOLIT_STREAMS_FEEDBACK_TTL_S": "30",
        "SMOLIT_LOG_JSON": "true",
    }
    worker = Worker(env, tmp_path / "streams.log")
    r1, r2, r3, r4, r5, r6, r7 = (uuid.uuid4() for _ in range(7))

    def send(outs: list[Outgoing]) -> None:
        for out in outs:
            producer.send(out)
        producer.flush()

    r1_answer = _answer(r1, "finance", 100, 2, prompt_tokens=10, completion_tokens=5, cost_usd=0.001, cache_hit=True)
    phase1 = [
        _decision(r1, "finance", 0.9, 1),
        r1_answer,
        _decision(r2, "legal", 0.6, 10),
        Outgoing(Topic.ANSWERS, str(r2), TaskFailed(correlation_id=r2, occurred_at=_at(11), agent="legal", reason="x")),
        _decision(r3, "finance", 0.8, 20),  # never answered: a timeout once the TTL passes
    ]
    phase2 = [
        _feedback(r1, "u1", 1, 3),
        _feedback(r1, "u1", -1, 4),  # the same user again: counts once
        _feedback(r1, "u2", -1, 5),
        r1_answer,  # an upstream duplicate of the same event
        _feedback(r4, "u1", 5, 33),  # feedback before its decision (out of order)
        _decision(r4, "finance", 0.85, 30),
        _answer(r4, "finance", 300, 31, prompt_tokens=20, completion_tokens=10, cost_usd=0.002),
        _decision(r5, "ghost", 0.5, 40),  # not in the agent catalogue: counted as `unknown`
        _answer(r5, "ghost", 50, 41),
        Outgoing(
            Topic.SUBQUERIES,
            "legal",
            SubqueryRequested(
                correlation_id=r4,
                occurred_at=_at(42),
                from_agent="finance",
                agent="legal",
                text="q",
                parent_event_id=uuid.uuid4(),
                depth=1,
            ),
        ),
        _decision(r6, "finance", 0.7, 70),
        _answer(r6, "finance", 200, 71),
    ]
    try:
        send(phase1)
        # Phase 1 with a watermark that never advances by itself, so nothing closes before the kill.
        worker.start(SMOLIT_STREAMS_IDLE_ADVANCE_S="100000")
        _wait_for(lambda: _metric(port, "smolit_streams_facts_total{") >= 5, 90, "phase 1 applied")

        def heartbeat() -> bool:  # the health signal /healthz reads
            with pool.connection() as conn:
                return conn.execute("SELECT 1 FROM service_heartbeats WHERE service = 'streams'").fetchone() is not None

        _wait_for(heartbeat, 10, "the streams heartbeat")
        worker.kill()  # SIGKILL right after processing: offsets are most likely not committed yet

        send(phase2)
        producer.send_raw(topics(Topic.FEEDBACK), str(r6), b"not json")
        producer.flush()
        worker.start(SMOLIT_STREAMS_IDLE_ADVANCE_S="1")

        windows = _unique(_read_until(profile, topics, Topic.AGENT_METRICS, 14, 120))
        examples = _unique(_read_until(profile, topics, Topic.TRAINING_EXAMPLES, 6, 60))

        # A decision far behind the watermark: its window has closed, so it is dropped from the metrics.
        send([_decision(r7, "finance", 0.99, 5)])
        examples = _unique(_read_until(profile, topics, Topic.TRAINING_EXAMPLES, 7, 60))
        _wait_for(lambda: _metric(port, "smolit_streams_late_facts_total") >= 1, 30, "the late fact")
        windows_after = _unique(read_events(profile, topics, Topic.AGENT_METRICS, 10_000, timeout_s=3))
        dead = read_events(profile, topics, Topic.DLQ, 1)
    finally:
        worker.stop()

    assert windows_after == windows, "a late event changed an emitted window"
    by_key = {(w.agent, w.window_kind, (w.window_start - T0).total_seconds()): w for w in windows.values()}
    assert sorted(by_key) == sorted(
        [("finance", "tumbling", 0), ("finance", "tumbling", 60), ("legal", "tumbling", 0), ("unknown", "tumbling", 0)]
        + [("finance", "hopping", s) for s in (-120, -60, 0, 60)]
        + [(a, "hopping", s) for a in ("legal", "unknown") for s in (-120, -60, 0)]
    )
    f0 = by_key[("finance", "tumbling", 0)]
    assert _window_view(f0) == {
        "requests": 3,
        "answers": 2,
        "failures": 1,
        "tokens": 45,
        "cache_hits": 1,
        "feedback_count": 3,
        "subqueries_sent": 1,
        "subqueries_received": 0,
    }
    assert f0.mean_rating == pytest.approx(5 / 3)
    assert f0.negative_rate == pytest.approx(1 / 3)
    assert f0.cost_usd == pytest.approx(0.003)
    assert f0.mean_routing_score == pytest.approx(0.85)
    assert f0.latency_p50_ms == pytest.approx(100, rel=0.01)
    assert f0.latency_p99_ms == pytest.approx(300, rel=0.01)
    assert (f0.window_end - f0.window_start).total_seconds() == 60
    legal = by_key[("legal", "tumbling", 0)]
    assert _window_view(legal) | {"score": legal.mean_routing_score} == {
        "requests": 1,
        "answers": 0,
        "failures": 1,
        "tokens": 0,
        "cache_hits": 0,
        "feedback_count": 0,
        "subqueries_sent": 0,
        "subqueries_received": 1,
        "score": pytest.approx(0.6),
    }
    unknown = by_key[("unknown", "tumbling", 0)]
    assert (unknown.requests, unknown.answers, unknown.latency_p95_ms) == (1, 1, pytest.approx(50, rel=0.01))
    f1 = by_key[("finance", "tumbling", 60)]
    assert (f1.requests, f1.answers, f1.failures, f1.latency_p50_ms) == (1, 1, 0, pytest.approx(200, rel=0.01))
    both = by_key[("finance", "hopping", 0)]
    assert (both.requests, both.answers, both.failures, both.feedback_count) == (4, 3, 1, 3)
    assert (both.window_end - both.window_start).total_seconds() == 180
    assert by_key[("finance", "hopping", 60)].requests == 1

    by_request = {e.correlation_id: e for e in examples.values()}
    assert all(isinstance(e, TrainingExample) for e in by_request.values())
    outcome = {rid: (e.agent, e.rating, e.failed, e.latency_ms) for rid, e in by_request.items()}  # type: ignore[attr-defined]
    assert outcome == {
        r1: ("finance", 1, False, 100),
        r2: ("legal", None, True, None),
        r3: ("finance", None, True, None),
        r4: ("finance", 5, False, 300),
        r5: ("ghost", None, False, 50),
        r6: ("finance", None, False, 200),
        r7: ("finance", None, True, None),
    }
    r1_example = by_request[r1]
    assert isinstance(r1_example, TrainingExample)
    assert (r1_example.text, r1_example.scores, r1_example.propensity) == (
        f"question {r1.hex[:6]}",
        {"finance": 0.9, "general": 0.1},
        0.9,
    )
    assert len(dead) == 1 and isinstance(dead[0], DeadLetter) and "undecodable" in dead[0].error
    tables = list((tmp_path / "data" / "streams").glob("*/slot-0/v1/tables/*.db"))
    assert bool(tables) == (store == "rocksdb"), tables
