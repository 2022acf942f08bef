"""Log lines of CLI commands go to stderr, so a command's `--json` on stdout stays one parseable document."""

from __future__ import annotations

import pytest
import structlog

from smolit.cli import route_logs_to_stderr


def test_cli_log_lines_go_to_stderr_not_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    before = structlog.get_config()
    try:
        route_logs_to_stderr()
        structlog.get_logger("bench").warning("topic not read to its end in time")
        print("{}")
    finally:
        structlog.configure(**before)
    captured = capsys.readouterr()
    assert captured.out.strip() == "{}"
    assert "topic not read to its end in time" in captured.err
