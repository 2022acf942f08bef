"""`smolit bench load` through the real system: a short open-loop step, every request answered and measured."""

from __future__ import annotations

import pytest

from smolit.bench_load import run_load_bench

pytestmark = pytest.mark.e2e


def test_a_short_load_step_with_two_agent_workers() -> None:
    result = run_load_bench([2.0], duration_s=4.0, agent_workers=2)
    (step,) = result["steps"]
    assert step["sent"] == 8 and step["answered"] == 8, step
    assert step["statuses"] == {"200": 8}
    assert step["latency_ms"]["p50"] > 0
    assert "smolit-agents" in step["consumer_lag_end"]
    # Both agent workers ran (and were measured) next to the other services, the broker and the database.
    assert {"agents", "agents#2", "router", "gateway", "broker", "database"} <= set(result["memory_mb_end"])
    assert all(mb > 0 for mb in result["memory_mb_end"].values()), result["memory_mb_end"]  # PSS read for each
