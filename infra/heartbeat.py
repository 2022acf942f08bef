"""Service liveness: each process upserts a heartbeat row; `/healthz` reads them."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool


class Heartbeat:
    """Background thread that records `service/instance` as alive every `interval_s` seconds."""

    def __init__(self, pool: ConnectionPool, service: str, instance: str, interval_s: float = 2.0) -> None:
        self._pool = pool
        self._service = service
        self._instance = instance
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{service}", daemon=True)
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        # The database being away at this moment only delays the first beat (the thread keeps trying).
        with contextlib.suppress(psycopg.Error):
            self.beat()
        self._thread.start()

    def beat(self) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO service_heartbeats (service, instance, pid, last_seen, info)"
                " VALUES (%s, %s, %s, now(), %s) ON CONFLICT (service, instance)"
                " DO UPDATE SET pid = EXCLUDED.pid, last_seen = now(), info = EXCLUDED.info",
                (self._service, self._instance, os.getpid(), Jsonb(self.info)),
            )

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            # The database being briefly away is reported by /healthz, not fatal here.
            with contextlib.suppress(psycopg.Error):
                self.beat()

    def stop(self) -> None:
        self._stop.set()
        try:
            with self._pool.connection(timeout=2) as conn:
                conn.execute(
                    "DELETE FROM service_heartbeats WHERE service = %s AND instance = %s",
                    (self._service, self._instance),
                )
        except Exception:
            pass


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    instance: str
    pid: int
    last_seen: datetime
    age_s: float
    info: dict[str, Any]


def service_statuses(pool: ConnectionPool) -> list[ServiceStatus]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT service, instance, pid, last_seen, extract(epoch FROM now() - last_seen), info"
            " FROM service_heartbeats ORDER BY service, instance"
        ).fetchall()
    return [ServiceStatus(r[0], r[1], r[2], r[3], float(r[4]), r[5]) for r in rows]
