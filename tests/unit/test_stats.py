"""`smolit stats` pure parts: time offsets, last value per key, flags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from smolit.contracts import AgentFlagged, AgentMetricsWindow, AgentRetired
from smolit.stats import flagged_agents, latest_windows, parse_since

NOW = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)


def test_since_takes_durations_and_iso_times() -> None:
    """Durations count back from now; ISO times without a zone are UTC; anything else is refused."""
    assert parse_since("30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2d", NOW) == NOW - timedelta(days=2)
    assert parse_since("2026-11-26T10:00") == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="duration like"):
        parse_since("yesterday")


def test_a_re_emitted_window_replaces_the_earlier_emission() -> None:
    """The same window published twice (an update) shows its latest emission."""
    start = NOW - timedelta(minutes=1)
    first, update = (
        AgentMetricsWindow(
            correlation_id=uuid4(), agent="a", window_start=start, window_end=NOW, requests=n, occurred_at=NOW + lag
        )
        for n, lag in ((1, timedelta(0)), (5, timedelta(seconds=3)))
    )
    assert [w.requests for w in latest_windows([update, first])] == [5]


def test_retirement_clears_a_flag() -> None:
    """A retired agent is no longer listed as flagged."""
    flag = AgentFlagged(correlation_id=uuid4(), agent="a", reason="slow", occurred_at=NOW)
    retired = AgentRetired(correlation_id=uuid4(), agent="a", reason="gone", occurred_at=NOW + timedelta(seconds=1))
    assert flagged_agents([flag]) == {"a": "slow"}
    assert flagged_agents([retired, flag]) == {}
