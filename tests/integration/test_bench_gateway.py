"""`smolit bench gateway` runs its own in-process pipeline and prints one JSON object."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from smolit.cli import app

pytestmark = pytest.mark.integration


def test_bench_gateway_prints_overhead_and_time_to_first_token() -> None:
    result = CliRunner().invoke(app, ["bench", "gateway", "--requests", "4", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["benchmark"], out["requests"], out["streamed"]) == ("gateway", 4, 2)
    assert 0 < out["gateway_overhead_ms"]["p50"] < out["end_to_end_ms"]["p50"]
    assert out["stream_time_to_first_token_ms"]["p50"] > 0
