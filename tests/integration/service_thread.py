"""A Smolit service (`smolit run SERVICE`) in a thread of the test process: its real wiring (start-up checks,
producer, pool) and consumer loops, against the test's broker, database and MLflow store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smolit.infra.settings import Settings
from smolit.services.wiring import Wiring, wiring


def service_settings(env: dict[str, str], **overrides: Any) -> Settings:
    """Settings from the `SMOLIT_*` variables the tests hand to the CLI, one thread per service."""
    values: dict[str, Any] = {
        "kafka_bootstrap": env["SMOLIT_KAFKA_BOOTSTRAP"],
        "kafka_profile": "tansu",
        "topic_prefix": env["SMOLIT_TOPIC_PREFIX"],
        "database_url": env["SMOLIT_DATABASE_URL"],
        "data_dir": Path(env["SMOLIT_DATA_DIR"]),
        "mlflow_tracking_uri": env["SMOLIT_MLFLOW_TRACKING_URI"],
        "threads": 1,
    }
    if "SMOLIT_AGENTS_DIR" in env:
        values["agents_dir"] = Path(env["SMOLIT_AGENTS_DIR"])
    return Settings(**(values | overrides))


@contextmanager
def service_thread(
    settings: Settings, service: str, run: Callable[[Wiring, threading.Event], None]
) -> Iterator[list[BaseException]]:
    """Run `service` until the block ends; yields the list its errors land in (asserted empty at the end)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with wiring(settings, service) as w:
                run(w, stop)
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=serve, name=f"{service}-service")
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
