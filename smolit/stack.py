"""The whole system in one supervisor: embedded broker and database (unless external), then the services."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from smolit.contracts import TopicNames
from smolit.infra.db import migrate
from smolit.infra.embedded import (
    Child,
    EmbeddedBroker,
    EmbeddedPostgres,
    EmbeddedStartError,
    free_port,
    spawn,
    terminate,
)
from smolit.infra.kafka import KafkaProfile, ensure_topics
from smolit.infra.settings import Settings

from .errors import SetupError
from .services import SERVICES

MAX_RESTARTS = 5
RESTART_WINDOW_S = 120.0
"""A service restarted this often within the window is crash-looping: the supervisor gives up on it."""

Step = Callable[[str], None]
"""Called with a short description as each start-up step begins."""


def state_path(data_dir: Path) -> Path:
    return data_dir / "run" / "state.json"


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """Addresses of a running `smolit up` on this data dir, or None."""
    path = state_path(data_dir)
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    try:
        os.kill(int(state["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None  # stale: the supervisor is gone
    return state


def running_bootstrap(settings: Settings) -> str:
    """The broker to talk to: the configured one, else the one of the `smolit up` running on this data dir."""
    return _running(settings, settings.kafka_bootstrap, "kafka_bootstrap", "SMOLIT_KAFKA_BOOTSTRAP")


def running_database_url(settings: Settings) -> str:
    """The database to talk to: the configured one, else the one of the `smolit up` running on this data dir."""
    return _running(settings, settings.database_url, "database_url", "SMOLIT_DATABASE_URL")


def _running(settings: Settings, configured: str | None, key: str, setting: str) -> str:
    if configured:
        return configured
    state = read_state(settings.data_dir)
    if state is None:
        raise SetupError(f"no running Smolit in {settings.data_dir.resolve()}: start `smolit up` or set {setting}")
    return str(state[key])


@dataclass
class Stack:
    settings: Settings
    on_step: Step = lambda _: None
    broker: EmbeddedBroker | None = None
    database: EmbeddedPostgres | None = None
    bootstrap: str = ""
    database_url: str = ""
    gateway_url: str = ""
    services: dict[str, Child] = field(default_factory=dict)
    _env: dict[str, str] = field(default_factory=dict, repr=False)
    _restarts: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def start(self, load_demo: Callable[[Stack], None] | None = None, timeout_s: float = 180.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_infrastructure()
            if load_demo is not None:
                load_demo(self)
            self._start_services(timeout_s)
        except BaseException:
            self.stop()
            raise
        self._write_state()

    def _start_infrastructure(self) -> None:
        s = self.settings
        if s.embedded_broker:
            self.on_step(f"starting embedded Kafka broker (Tansu, {s.kafka_storage} storage)")
            self.broker = EmbeddedBroker(self.data_dir, s.kafka_storage, s.kafka_port, self.log_dir)
            try:
                self.bootstrap = self.broker.start()
            except EmbeddedStartError as exc:
                raise SetupError(str(exc)) from exc
        else:
            self.bootstrap = s.kafka_bootstrap or ""
        if s.embedded_database:
            self.on_step("starting embedded PostgreSQL + pgvector")
            self.database = EmbeddedPostgres(self.data_dir, s.database_port, self.log_dir)
            try:
                self.database_url = self.database.start()
            except EmbeddedStartError as exc:
                raise SetupError(str(exc)) from exc
        else:
            self.database_url = s.database_url or ""
        self.on_step("applying database migrations")
        try:
            migrate(self.database_url)
        except Exception as exc:
            raise SetupError(
                f"database at {self.database_url.split('@')[-1]} is not usable (setting SMOLIT_DATABASE_URL): {exc}"
            ) from exc
        self.on_step("creating topics")
        profile = KafkaProfile(self.bootstrap, embedded=s.tansu_profile)
        try:
            ensure_topics(
                profile.admin(),
                TopicNames(s.topic_prefix),
                s.topic_partitions,
                timeout_s=20,
                replication_factor=1 if s.embedded_broker else s.topic_replication_factor,
            )
        except Exception as exc:
            raise SetupError(
                f"Kafka broker at {self.bootstrap} is not reachable (setting SMOLIT_KAFKA_BOOTSTRAP): {exc}"
            ) from exc

    def service_env(self) -> dict[str, str]:
        """Environment for service processes: the resolved addresses on top of the user's settings."""
        env = dict(os.environ)
        env |= {
            "SMOLIT_KAFKA_BOOTSTRAP": self.bootstrap,
            "SMOLIT_DATABASE_URL": self.database_url,
            "SMOLIT_KAFKA_PROFILE": "tansu" if self.settings.tansu_profile else "kafka",
            "SMOLIT_KAFKA_STORAGE": self.settings.kafka_storage,  # the services size their fetch wait by it
            "SMOLIT_DATA_DIR": str(self.data_dir),
            "SMOLIT_LOG_JSON": "true",
        }
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(self.settings.threads))
        return env

    def _start_services(self, timeout_s: float) -> None:
        port = self.settings.port or free_port()
        self.gateway_url = f"http://{self.settings.host}:{port}"
        self._env = self.service_env() | {"SMOLIT_PORT": str(port)}
        for name in SERVICES:
            self.on_step(f"starting {name}")
            self._spawn(name)
        self.on_step("waiting for every service to report healthy")
        self._wait_healthy(timeout_s)

    def _spawn(self, key: str) -> None:
        """Start the process `key` names: a service, or `service#N` for its N-th instance."""
        service = key.split("#")[0]
        # Services die with the supervisor even if it is killed (parent-death signal), never orphaned.
        self.services[key] = spawn(
            key,
            [sys.executable, "-m", "smolit", "run", service],
            self.log_dir / f"{key.replace('#', '-')}.log",
            env=self._env,
        )

    def add_instance(self, service: str) -> str:
        """One more process of `service` in its consumer group (scale-out); its key in `services`."""
        n = 2
        while f"{service}#{n}" in self.services:
            n += 1
        key = f"{service}#{n}"
        self._spawn(key)
        return key

    def kill_service(self, name: str, restart: bool = True) -> int:
        """SIGKILL one service (a crash: no drain, no commit) and, as a process manager would, start it again.

        Returns the new process id (0 when not restarted)."""
        child = self.services[name]
        if child.running():
            child.proc.kill()
        child.proc.wait()
        if not restart:
            return 0
        self._spawn(name)
        return self.services[name].pid

    def restart_broker(self) -> None:
        """Crash the embedded broker and start it again on the same address (durable storage keeps the log)."""
        if self.broker is None:
            raise SetupError("the broker is external: restart it where it runs")
        self.broker.crash_and_restart()

    def restart_database(self) -> None:
        """Stop the embedded database (fast shutdown: open transactions abort) and start it on the same address."""
        if self.database is None:
            raise SetupError("the database is external: restart it where it runs")
        self.database.stop()
        self.database.start()

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if (dead := self.check_services()) is not None:
                raise SetupError(dead)
            try:
                response = httpx.get(f"{self.gateway_url}/healthz", timeout=5)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise SetupError(f"services not healthy after {timeout_s:.0f}s: {last}")

    def _log_tail(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        # The cause is usually a few lines above the last one (shutdown lines follow it).
        return "\n".join(lines[-8:]) + f"\n(log: {path})" if lines else f"no output (log: {path})"

    def _write_state(self) -> None:
        path = state_path(self.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "gateway_url": self.gateway_url,
                    "kafka_bootstrap": self.bootstrap,
                    "database_url": self.database_url,
                    "services": {n: c.pid for n, c in self.services.items()},
                },
                indent=2,
            )
        )

    def supervise(self) -> list[str]:
        """Restart services that exited, as a process manager would; returns a line per restart.

        A service that exits with code 2 (its settings are wrong) or keeps exiting (`MAX_RESTARTS` within
        `RESTART_WINDOW_S`) is not restarted: SetupError names it and the tail of its log.
        """
        lines = []
        for name, child in list(self.services.items()):
            if child.running():
                continue
            now = time.monotonic()
            recent = [t for t in self._restarts.get(name, []) if now - t < RESTART_WINDOW_S]
            dead = f"{name} exited with code {child.proc.returncode}"
            if child.proc.returncode == 2 or len(recent) >= MAX_RESTARTS:
                raise SetupError(
                    f"{dead} ({len(recent)} restarts in the last {RESTART_WINDOW_S:.0f}s): {self._log_tail(name)}"
                )
            self._restarts[name] = [*recent, now]
            self._spawn(name)
            lines.append(f"{dead}; restarted (log: {self.log_dir / f'{name}.log'})")
        return lines

    def check_services(self) -> str | None:
        """Name and exit code of a service that died, if any."""
        for name, child in self.services.items():
            if not child.running():
                return f"{name} exited with code {child.proc.returncode}: {self._log_tail(name)}"
        return None

    def pids(self) -> dict[str, list[int]]:
        """Process ids by role, for memory accounting."""
        return {
            "services": [c.pid for c in self.services.values() if c.running()],
            "broker": self.broker.pids() if self.broker else [],
            "database": self.database.pids() if self.database else [],
        }

    def stop(self) -> None:
        """Stop services first (they drain and commit), then the broker and the database."""
        for child in self.services.values():  # signal all first so they drain in parallel
            if child.running():
                child.proc.send_signal(signal.SIGTERM)
        for child in self.services.values():
            terminate(child, 20)
        self.services.clear()
        if self.broker is not None:
            self.broker.stop()
        if self.database is not None:
            self.database.stop()
        state_path(self.data_dir).unlink(missing_ok=True)
