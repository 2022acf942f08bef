"""Processed-event ids per consumer group, so redelivered events are handled once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

from psycopg_pool import ConnectionPool


class Deduper(Protocol):
    def seen(self, group: str, event_ids: Sequence[UUID]) -> set[UUID]:
        """The ids among `event_ids` this group has already processed."""
        ...

    def mark(self, group: str, event_ids: Sequence[UUID]) -> None:
        """Record ids as processed by this group."""
        ...


class MemoryDeduper:
    """In-process fake for unit tests of pure logic."""

    def __init__(self) -> None:
        self._done: set[tuple[str, UUID]] = set()

    def seen(self, group: str, event_ids: Sequence[UUID]) -> set[UUID]:
        return {i for i in event_ids if (group, i) in self._done}

    def mark(self, group: str, event_ids: Sequence[UUID]) -> None:
        self._done.update((group, i) for i in event_ids)


class PostgresDeduper:
    """Processed ids in the `processed_events` table (see infra.db schema)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def seen(self, group: str, event_ids: Sequence[UUID]) -> set[UUID]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT event_id FROM processed_events WHERE consumer_group = %s AND event_id = ANY(%s)",
                (group, list(event_ids)),
            ).fetchall()
        return {r[0] for r in rows}

    def mark(self, group: str, event_ids: Sequence[UUID]) -> None:
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO processed_events (consumer_group, event_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [(group, i) for i in event_ids],
            )
