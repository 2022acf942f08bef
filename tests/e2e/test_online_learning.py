"""`smolit bench routing` online protocol on a tiny set: requests, feedback, streams join, learner, registry, curve —
all through two fresh systems started like `smolit up`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smolit.cli import app

from ..integration.test_bench_routing import FINANCE, HEALTH

pytestmark = pytest.mark.e2e


def test_feedback_through_the_running_system_trains_registered_models(tmp_path: Path) -> None:
    rows = [(t, "finance") for t in FINANCE] + [(t, "health") for t in HEALTH]
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for t, d in rows[0:8] + rows[10:18]))
    test.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for t, d in rows[8:10] + rows[18:20]))

    result = CliRunner().invoke(app, ["bench", "routing", "--train", str(train), "--test", str(test), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for mode in ("bandit", "corrective"):
        curve = report[f"online_curve_{mode}"]
        assert curve[0][0] == 0
        assert len(curve) >= 2, f"{mode}: the learner registered no model from the feedback"
        assert curve[-1][0] > 0 and 0.0 <= report[f"online_final_accuracy_{mode}"] <= 1.0
    assert report["online_final_accuracy"] == report["online_final_accuracy_corrective"]
    assert report["route_latency_ms_p50"] > 0 and report["learn_events_per_s"] > 0
