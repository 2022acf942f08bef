"""Start-up errors the user can act on: one line naming the address and the setting, non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smolit.infra.embedded import free_port

pytestmark = pytest.mark.integration


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smolit", *args], env=dict(os.environ) | env, capture_output=True, text=True, timeout=120
    )


def test_unreachable_broker_is_one_clear_line() -> None:
    """A service pointed at a dead broker exits 2 with the address and the setting, and no traceback."""
    port = free_port()
    result = _run(
        ["run", "router"],
        SMOLIT_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
        SMOLIT_DATABASE_URL="postgresql://x@127.0.0.1:1/x",
    )
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr and "SMOLIT_KAFKA_BOOTSTRAP" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_unreachable_database_is_one_clear_line(broker: str) -> None:
    """A service pointed at a dead database exits 2 naming the database address and its setting."""
    port = free_port()
    result = _run(
        ["run", "agents"],
        SMOLIT_KAFKA_BOOTSTRAP=broker,
        SMOLIT_KAFKA_PROFILE="tansu",
        SMOLIT_DATABASE_URL=f"postgresql://smolit@127.0.0.1:{port}/smolit",
    )
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr and "SMOLIT_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_ask_without_a_running_system_says_so(tmp_path) -> None:
    """`smolit ask` with nothing running tells the user to start `smolit up`."""
    result = _run(["ask", "hello"], SMOLIT_DATA_DIR=str(tmp_path), SMOLIT_PORT=str(free_port()))
    assert result.returncode == 2
    assert "smolit up" in result.stderr and "Traceback" not in result.stderr
