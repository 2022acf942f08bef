"""Stream metrics become per-agent gauges: last window per agent and length, flags from lifecycle events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from prometheus_client import CollectorRegistry

from smolit.contracts import AgentCard, AgentFlagged, AgentMetricsWindow, AgentUnflagged, AgentUpdated
from smolit.infra.agent_gauges import AgentGaugeProjection, AgentGauges, window_kind

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _window(start: datetime, length: timedelta = MINUTE, **fields: object) -> AgentMetricsWindow:
    return AgentMetricsWindow(
        correlation_id=uuid4(), agent="finance", window_start=start, window_end=start + length, **fields
    )


def test_window_kind_names_the_length() -> None:
    """Window lengths become short labels."""
    assert [window_kind(_window(T0, d)) for d in (MINUTE, 5 * MINUTE, 60 * MINUTE, timedelta(seconds=90))] == [
        "1m",
        "5m",
        "1h",
        "90s",
    ]


def test_latest_window_wins_and_missing_values_are_dropped() -> None:
    """A late older window does not overwrite a newer one; a window without ratings removes the old rating."""
    registry = CollectorRegistry()
    projection = AgentGaugeProjection(AgentGauges.create(registry))
    labels = {"agent": "finance", "window": "1m"}
    projection.handle([_window(T0 + MINUTE, requests=9, latency_p95_ms=250.0, mean_rating=4.5)])
    projection.handle([_window(T0, requests=2, mean_rating=1.0)])  # older, arrives late
    assert registry.get_sample_value("smolit_agent_window_requests", labels) == 9
    assert registry.get_sample_value("smolit_agent_window_latency_p95_seconds", labels) == 0.25
    assert registry.get_sample_value("smolit_agent_window_mean_rating", labels) == 4.5
    projection.handle([_window(T0 + 2 * MINUTE, requests=4)])
    assert registry.get_sample_value("smolit_agent_window_requests", labels) == 4
    assert registry.get_sample_value("smolit_agent_window_mean_rating", labels) is None


def test_flag_is_set_and_cleared_by_lifecycle_events() -> None:
    """AgentFlagged sets the flag gauge; a new card version keeps it; AgentUnflagged clears it."""
    registry = CollectorRegistry()
    projection = AgentGaugeProjection(AgentGauges.create(registry))
    projection.handle([AgentFlagged(correlation_id=uuid4(), agent="legal", reason="slow")])
    assert registry.get_sample_value("smolit_agent_flagged", {"agent": "legal"}) == 1
    projection.handle([AgentUpdated(correlation_id=uuid4(), card=AgentCard(name="legal", description="l", version=2))])
    assert registry.get_sample_value("smolit_agent_flagged", {"agent": "legal"}) == 1
    projection.handle([AgentUnflagged(correlation_id=uuid4(), agent="legal", reason="operator")])
    assert registry.get_sample_value("smolit_agent_flagged", {"agent": "legal"}) == 0
