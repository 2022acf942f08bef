"""`smolit bench gateway` runs its own in-process pipeline and prints one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_gateway_prints_overhead_and_time_to_first_token() -> None:
    # A subprocess, as a user runs it: the bench starts and stops its own broker and database, which must not
    # touch the session's (run in-process, the session broker died when the bench's pipeline shut down).
    result = subprocess.run(
        [sys.executable, "-m", "smolit", "bench", "gateway", "--requests", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert (out["benchmark"], out["requests"], out["streamed"]) == ("gateway", 4, 2)
    assert 0 < out["gateway_overhead_ms"]["p50"] < out["end_to_end_ms"]["p50"]
    assert out["stream_time_to_first_token_ms"]["p50"] > 0
    security = out["security"]
    assert security["open"]["requests_per_s_sequential"] > 0 and security["secured"]["requests_per_s_sequential"] > 0
    assert isinstance(security["added_end_to_end_ms_p50"], float)
    assert isinstance(security["added_gateway_ms_p50"], float)
    # Whether the router reuses the filter's vector depends on the cascade (only encoded texts carry one):
    # test_security.py checks both paths functionally instead of comparing timings here.
