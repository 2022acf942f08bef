"""`smolit stats` against AgentMetricsWindow events on a real broker topic."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from smolit.cli import app as cli
from smolit.contracts import AgentCard, AgentFlagged, AgentMetricsWindow, AgentUpdated, Topic, TopicNames
from smolit.infra.kafka import EventProducer, Outgoing

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _window(agent: str, start: datetime, length: timedelta, **fields: object) -> AgentMetricsWindow:
    return AgentMetricsWindow(
        correlation_id=uuid.uuid4(), agent=agent, window_start=start, window_end=start + length, **fields
    )


def _run(broker: str, topics: TopicNames, *args: str) -> str:
    env = {"SMOLIT_KAFKA_BOOTSTRAP": broker, "SMOLIT_TOPIC_PREFIX": topics.prefix, "SMOLIT_KAFKA_PROFILE": "tansu"}
    result = CliRunner().invoke(cli, ["stats", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_stats_shows_the_latest_window_per_agent_and_length(
    broker: str, topics: TopicNames, producer: EventProducer
) -> None:
    """The last window per (agent, window length) wins, whatever partition or order it arrived in; flags show."""
    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    windows = [
        _window("finance", T0 + minute, minute, requests=7, answers=6, failures=1, latency_p50_ms=12.5),
        _window("finance", T0, minute, requests=3, answers=3),  # older, arrives later
        _window("finance", T0, hour, requests=100, answers=98, failures=2, mean_rating=4.2, negative_rate=0.1),
        _window("legal", T0, minute, requests=2, answers=2, feedback_count=2, mean_rating=-1.0, negative_rate=1.0),
    ]
    for w in windows:
        producer.send(Outgoing(Topic.AGENT_METRICS, w.agent, w))
    flag = AgentFlagged(correlation_id=uuid.uuid4(), agent="legal", reason="negative feedback 100%")
    cleared = AgentFlagged(correlation_id=uuid.uuid4(), agent="general", reason="slow", occurred_at=T0)
    update = AgentUpdated(correlation_id=uuid.uuid4(), card=AgentCard(name="general", description="g"))
    for event in (flag, cleared, update):
        producer.send(Outgoing(Topic.AGENT_LIFECYCLE, "x", event))
    producer.flush()

    rows = json.loads(_run(broker, topics, "--json"))
    got = {(r["agent"], r["window"]): r for r in rows}
    assert set(got) == {("finance", "1m"), ("finance", "1h"), ("legal", "1m")}
    assert (got["finance", "1m"]["requests"], got["finance", "1m"]["failures"]) == (7, 1)
    assert got["finance", "1m"]["failure_rate"] == round(1 / 7, 4)
    assert got["finance", "1h"]["mean_rating"] == 4.2
    assert got["legal", "1m"]["flagged"] == "negative feedback 100%"
    assert got["finance", "1m"]["flagged"] is None

    assert [r["window"] for r in json.loads(_run(broker, topics, "--json", "--window", "1h"))] == ["1h"]
    table = _run(broker, topics)
    assert "finance" in table and "legal" in table and "⚑ legal: negative feedback 100%" in table


def test_stats_since_drops_older_windows(broker: str, topics: TopicNames, producer: EventProducer) -> None:
    """`--since 1h` keeps windows recorded in the last hour only."""
    now = datetime.now(UTC)
    old = _window("finance", now - timedelta(hours=3), timedelta(minutes=1), occurred_at=now - timedelta(hours=2))
    new = _window("legal", now - timedelta(minutes=2), timedelta(minutes=1), requests=1)
    for w in (old, new):
        producer.send(Outgoing(Topic.AGENT_METRICS, w.agent, w))
    producer.flush()
    assert [r["agent"] for r in json.loads(_run(broker, topics, "--json", "--since", "1h"))] == ["legal"]
    assert [r["agent"] for r in json.loads(_run(broker, topics, "--json"))] == ["finance", "legal"]


def test_stats_on_an_empty_topic_says_so(broker: str, topics: TopicNames) -> None:
    """No windows yet: a one-line explanation, not an empty table."""
    assert "no agent metrics yet" in _run(broker, topics)
