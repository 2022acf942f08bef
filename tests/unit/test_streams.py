"""Pure stream logic: panes, windows, the join state machine and facts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from smolit.contracts import AnswerProduced, FeedbackGiven, RoutingDecided, SubqueryRequested, TaskFailed
from smolit.streams import AgentWindows, JoinEntry, Pane, WindowSpec, is_negative, training_example_id
from smolit.streams.facts import direct_facts, relabel

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _fact(offset: int, t: float = 1.0, **values: float) -> dict:
    return {"a": "finance", "t": t, "s": ["answers", 0, offset], **values}


def test_pane_applies_each_source_offset_once() -> None:
    """A fact replayed from an already applied offset is skipped; facts without offsets dedupe by id."""
    pane = Pane()
    assert pane.add(_fact(5, req=1, score=0.5))
    assert not pane.add(_fact(5, req=1, score=0.5))
    assert not pane.add(_fact(4, req=1))
    assert pane.add({"a": "finance", "t": 1.0, "id": "fb:r:u", "fb": -1})
    assert not pane.add({"a": "finance", "t": 1.0, "id": "fb:r:u", "fb": -1})
    assert (pane.requests, pane.feedback_count, pane.negatives) == (1, 1, 1)


def test_pane_round_trips_through_json_form() -> None:
    """A pane restored from its table value equals the original."""
    pane = Pane()
    pane.add(_fact(1, ans=1, lat=123.0, tok=7, cost=0.5))
    assert Pane.from_dict(pane.to_dict()) == pane


def test_merged_percentiles_match_the_exact_ones_within_resolution() -> None:
    """p50/p95/p99 of merged panes are within 1 % of the nearest-rank percentiles of the raw latencies."""
    latencies = [float(v) for v in range(1, 1001)]
    a, b = Pane(), Pane()
    for i, lat in enumerate(latencies):
        (a if i % 2 else b).add(_fact(i, ans=1, lat=lat))
    merged = a.merge(b)
    assert merged.answers == 1000
    for q, exact in ((0.5, 500), (0.95, 950), (0.99, 990)):
        assert merged.quantile(q) == pytest.approx(exact, rel=0.01)


def test_window_event_is_deterministic() -> None:
    """The same window yields the same event id, so re-emission after a restart is deduped downstream."""
    pane = Pane()
    pane.add(_fact(1, req=1, score=0.8))
    first = pane.to_event("finance", "tumbling", 0, 60)
    assert first == pane.to_event("finance", "tumbling", 0, 60)
    assert first.event_id != pane.to_event("finance", "hopping", 0, 60).event_id
    assert first.mean_routing_score == 0.8 and first.window_kind == "tumbling"


def test_watermark_closes_tumbling_and_hopping_windows_after_the_lateness_bound() -> None:
    """Windows close lateness seconds after their end; each is emitted once; empty ones not at all."""
    spec = WindowSpec(tumbling_s=60, hopping_s=180, hop_s=60, lateness_s=10)
    windows = AgentWindows(spec)
    p0, p1 = Pane(), Pane()
    p0.add(_fact(1, t=5, req=1))
    p1.add(_fact(2, t=65, req=1))
    panes = {0: p0, 60: p1}
    emitted: dict[str, float] = {}
    assert windows.close("finance", panes, emitted, watermark=69) == []
    out = windows.close("finance", panes, emitted, watermark=70)
    assert [(e.window_kind, e.requests) for e in out] == [("tumbling", 1), ("hopping", 1)]
    assert windows.close("finance", panes, emitted, watermark=70) == []
    out = windows.close("finance", panes, emitted, watermark=1000)
    kinds = [(e.window_kind, (e.window_start - T0).total_seconds() % 86400, e.requests) for e in out]
    assert [k[0] for k in kinds].count("tumbling") == 1
    assert [k[2] for k in kinds if k[0] == "hopping"] == [2, 2, 1]
    assert windows.is_late(30, emitted) and windows.removable(0, emitted) and windows.removable(60, emitted)


def test_window_spec_rejects_a_step_that_does_not_divide_the_size() -> None:
    """Hopping windows must be a whole number of steps."""
    with pytest.raises(ValueError, match="multiple"):
        WindowSpec(hopping_s=100, hop_s=60)


def test_ratings_negative_on_both_scales() -> None:
    """Thumbs down and low stars are negative; thumbs up and high stars are not."""
    assert [is_negative(r) for r in (-1, 0, 1, 2, 3, 4, 5)] == [True, True, False, True, False, False, False]


def _decision(rid: uuid.UUID, t: float = 0.0) -> RoutingDecided:
    return RoutingDecided(
        correlation_id=rid,
        occurred_at=T0 + timedelta(seconds=t),
        agent="legal",
        scores={"legal": 0.7},
        score=0.7,
        model_version="m",
        propensity=0.5,
        latency_ms=1,
        embedding="AA",
        text="q",
    )


def test_join_emits_once_decision_answer_and_first_feedback_are_known_in_any_order() -> None:
    """Feedback may come first; the example carries the first rating, and a repeat rater counts once."""
    rid = uuid.uuid4()
    entry = JoinEntry(str(rid), 0, 0.0)
    entry.apply(FeedbackGiven(correlation_id=rid, rating=4, user="u"))
    assert not entry.ready() and entry.feedback_facts() == []
    entry.apply(_decision(rid))
    entry.apply(FeedbackGiven(correlation_id=rid, rating=1, user="u"))
    assert len(entry.feedback_facts()) == 1
    entry.apply(
        AnswerProduced(correlation_id=rid, agent="legal", answer="a", backend="x", latency_ms=42, card_version=2)
    )
    assert entry.ready()
    example = entry.example()
    assert (example.rating, example.failed, example.latency_ms, example.propensity) == (4, False, 42, 0.5)
    assert example.card_version == 2  # the answering card version travels on, to judge each version apart
    assert example.event_id == training_example_id(rid) and not entry.ready()


def test_join_treats_failures_and_timeouts_as_negative_examples() -> None:
    """A TaskFailed yields a failed example at once; a decision never answered fails at the TTL."""
    rid = uuid.uuid4()
    failed = JoinEntry(str(rid), 0, 0.0)
    failed.apply(_decision(rid))
    failed.apply(TaskFailed(correlation_id=rid, agent="legal", reason="boom"))
    assert failed.ready() and failed.example().failed
    silent = JoinEntry(str(rid), 0, 0.0)
    silent.apply(_decision(rid, t=10))
    assert silent.deadline(30) == (T0 + timedelta(seconds=40)).timestamp()
    example, timeout = silent.expire(30)
    assert example is not None and example.failed and timeout is not None
    assert (timeout["fail"], timeout["t"]) == (1, silent.deadline(30))  # counted when it became known


def test_join_tells_a_replay_from_a_duplicate() -> None:
    """The same event at the same offset is a replay; at another offset, an upstream duplicate."""
    rid = uuid.uuid4()
    entry = JoinEntry(str(rid), 0, 0.0)
    event = _decision(rid)
    assert not entry.is_duplicate(event, "decisions:0:1")
    assert not entry.is_duplicate(event, "decisions:0:1")
    assert entry.is_duplicate(event, "decisions:0:7")
    assert JoinEntry.from_dict(entry.to_dict()) == entry


def test_facts_from_subqueries_and_unknown_agents() -> None:
    """A subquery counts as sent for the asker and received for the asked; unknown agents are relabelled."""
    rid = uuid.uuid4()
    event = SubqueryRequested(correlation_id=rid, from_agent="a", agent="b", text="t", parent_event_id=rid, depth=1)
    facts = direct_facts(event, ("subqueries", 1, 9))
    assert [(f["a"], f.get("sqs", 0), f.get("sqr", 0)) for f in facts] == [("a", 1, 0), ("b", 0, 1)]
    assert relabel(facts[0], frozenset({"b"}))["a"] == "unknown"
    assert relabel(facts[1], frozenset({"b"}))["a"] == "b"


def test_embedded_faust_profile_carries_the_tansu_workarounds() -> None:
    """On Tansu: one record per producer batch, short sessions and fetch waits, at-least-once; not on real Kafka."""
    from smolit.infra.kafka import KafkaProfile

    tansu, kafka = KafkaProfile("127.0.0.1:9092", embedded=True), KafkaProfile("a:1,b:2", embedded=False)
    conf = tansu.faust()
    assert (conf["producer_max_batch_size"], conf["producer_linger"], conf["broker_session_timeout"]) == (1, 0.0, 6.0)
    assert conf["processing_guarantee"] == "at_least_once" and tansu.faust_fetch_wait_ms == 10
    assert "producer_max_batch_size" not in kafka.faust() and kafka.faust_fetch_wait_ms is None
    assert kafka.faust()["broker"] == "kafka://a:1;kafka://b:2"


def test_payloads_without_the_new_fields_still_decode() -> None:
    """Old `RoutingDecided` (no text) and `AgentMetricsWindow` (no window_kind) payloads decode with defaults."""
    import json

    from smolit.contracts import AgentMetricsWindow, decode, encode

    decided = json.loads(encode(_decision(uuid.uuid4()))[0])
    del decided["text"]
    assert decode(json.dumps(decided).encode()).text == ""  # type: ignore[attr-defined]
    window = json.loads(encode(Pane().to_event("a", "hopping", 0, 60))[0])
    del window["window_kind"]
    decoded = decode(json.dumps(window).encode())
    assert isinstance(decoded, AgentMetricsWindow) and decoded.window_kind == "tumbling"


def test_fetch_wait_follows_the_embedded_storage() -> None:
    """On s3 storage Tansu reads more records per fetch the longer it may hold it: 50 ms there, 10 ms in memory."""
    from smolit.infra.kafka import KafkaProfile
    from smolit.infra.settings import Settings

    assert Settings(kafka_storage="s3").tansu_fetch_wait_ms == 50
    assert Settings(kafka_storage="memory").tansu_fetch_wait_ms == 10
    assert Settings(kafka_storage="s3", kafka_fetch_wait_ms=120).tansu_fetch_wait_ms == 120
    profile = KafkaProfile("127.0.0.1:9092", embedded=True, fetch_wait_ms=50)
    assert profile.consumer("g")["fetch.wait.max.ms"] == 50 and profile.faust_fetch_wait_ms == 50
    assert "fetch.wait.max.ms" not in KafkaProfile("a:1", embedded=False, fetch_wait_ms=50).consumer("g")


def test_idle_partition_advances_to_the_wall_clock_only_when_nothing_is_left_to_read() -> None:
    """A partition waiting in a backlog keeps its event-time watermark; a caught-up idle one follows the clock."""
    from smolit.streams.watermark import Watermark

    wm = Watermark()
    wm.observe(1_000.0, "decisions")
    assert wm.current(idle_s=0.0, lagging=["decisions"]) == 1_000.0
    assert wm.current(idle_s=0.0) > 1_000.0
    assert wm.current(idle_s=3_600.0) == 1_000.0


def test_a_topic_read_ahead_does_not_carry_the_watermark_past_one_still_behind() -> None:
    """With records left to read, the watermark is the slowest lagging topic's event time (held while unknown)."""
    from smolit.streams.watermark import Watermark

    wm = Watermark()
    wm.observe(1_000.0, "decisions")
    wm.observe(1_090.0, "feedback")
    assert wm.current(idle_s=3_600.0) == 1_090.0
    assert wm.current(idle_s=3_600.0, lagging=["decisions"]) == 1_000.0
    assert wm.current(idle_s=0.0, lagging=["decisions", "answers"]) is None
