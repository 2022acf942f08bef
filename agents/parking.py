"""Parked answers: an agent's own partial answer waits in Postgres for its subanswers, never in a blocked thread.

Exactly one final event per parked task: the first subanswer that completes the set, or the deadline sweep, writes
the final event into `result` under a row lock; a redelivered subanswer re-emits that same stored event (same event
id, so consumers drop the duplicate). Rows finished by the sweep are re-sent until the sweep has flushed them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from uuid import UUID

import structlog
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict

from smolit.contracts import EVENT_TYPES, Event, ModelUse, Source, SubqueryAnswered, SubqueryRequested, Topic
from smolit.infra.kafka import EventProducer, Outgoing
from smolit.infra.llm import Passage

from .subqueries import SubResult

log = structlog.get_logger("smolit.agents.parking")


class Draft(BaseModel):
    """The asking agent's own part of an answer and what it cost, kept while subanswers are awaited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    answer: str
    sources: tuple[Source, ...] = ()
    backend: str
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hit: bool = False
    started_at: float
    """Wall-clock time (epoch seconds) the agent received the task; latency is measured from it."""
    subqueries: int = 0
    question: str = ""
    """What the agent answered itself."""
    passages: tuple[Passage, ...] = ()
    """Its retrieved passages, kept when the LLM writes the final answer with the subanswers (`rewrite`)."""
    rewrite: bool = False
    """The LLM asked for the subqueries (tool call), so it writes the final answer once they are in."""
    models: tuple[ModelUse, ...] = ()
    """Pipeline models that ran for this answer (OCR of attachments), recorded on `AnswerProduced`."""


Finisher = Callable[[Event, Draft, Sequence[SubResult]], Outgoing]
"""Builds the final event (AnswerProduced, or SubqueryAnswered for a nested subquery) of a parked task."""


def _event(data: dict) -> Event:
    return EVENT_TYPES[data["type"]].model_validate(data)


class ParkingLot:
    """Postgres tables `parked_tasks` and `parked_subqueries` (migration 2)."""

    def __init__(self, pool: ConnectionPool, retention_s: float = 3600.0) -> None:
        self._pool = pool
        self._retention_s = retention_s

    def park(self, parent: Event, draft: Draft, subqueries: Sequence[SubqueryRequested], deadline: datetime) -> None:
        """Store the partial answer and the subqueries it waits for; a rerun of the same task changes nothing."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO parked_tasks (parent_event_id, correlation_id, agent, parent, draft, deadline)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (parent_event_id) DO NOTHING",
                (
                    parent.event_id,
                    parent.correlation_id,
                    str(getattr(parent, "agent", "")),
                    Jsonb(parent.model_dump(mode="json")),
                    Jsonb(draft.model_dump(mode="json")),
                    deadline,
                ),
            )
            for sub in subqueries:
                conn.execute(
                    "INSERT INTO parked_subqueries (subquery_event_id, parent_event_id, agent)"
                    " VALUES (%s, %s, %s) ON CONFLICT (subquery_event_id) DO NOTHING",
                    (sub.event_id, parent.event_id, sub.agent),
                )

    def collect(self, answer: SubqueryAnswered, finish: Finisher) -> list[Outgoing]:
        """Record a subanswer; once every subquery of its parent has answered, the parent's final event."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT p.parent_event_id, p.parent, p.draft, p.result, p.finished_by"
                " FROM parked_subqueries s JOIN parked_tasks p ON p.parent_event_id = s.parent_event_id"
                " WHERE s.subquery_event_id = %s FOR UPDATE OF p",
                (answer.subquery_event_id,),
            ).fetchone()
            if row is None:
                return []  # not a subquery this deployment asked, or long finished and cleaned up
            parent_id, parent, draft, result, finished_by = row
            if result is not None:
                # A redelivered subanswer: repeat the stored final event. After the sweep answered, stay quiet.
                return [] if finished_by == "sweep" else [_outgoing(result)]
            conn.execute(
                "UPDATE parked_subqueries SET answer = %s WHERE subquery_event_id = %s AND answer IS NULL",
                (Jsonb(answer.model_dump(mode="json")), answer.subquery_event_id),
            )
            subs = conn.execute(
                "SELECT agent, answer FROM parked_subqueries WHERE parent_event_id = %s ORDER BY agent",
                (parent_id,),
            ).fetchall()
            if any(a is None for _, a in subs):
                return []
            results = [SubResult(agent, SubqueryAnswered.model_validate(a)) for agent, a in subs]
            out = finish(_event(parent), Draft.model_validate(draft), results)
            self._finish(conn, parent_id, out, "answers")
            return [out]

    def sweep(self, now: datetime, finish: Finisher, limit: int = 100) -> list[tuple[UUID, Outgoing]]:
        """Finish parked tasks past their deadline with what has arrived; returns every undelivered sweep result."""
        with self._pool.connection() as conn:
            with conn.transaction():
                expired = conn.execute(
                    "SELECT parent_event_id, parent, draft FROM parked_tasks"
                    " WHERE result IS NULL AND deadline <= %s ORDER BY deadline LIMIT %s FOR UPDATE SKIP LOCKED",
                    (now, limit),
                ).fetchall()
                for parent_id, parent, draft in expired:
                    subs = conn.execute(
                        "SELECT agent, answer FROM parked_subqueries WHERE parent_event_id = %s ORDER BY agent",
                        (parent_id,),
                    ).fetchall()
                    results = [
                        SubResult(agent, SubqueryAnswered.model_validate(a) if a is not None else None)
                        for agent, a in subs
                    ]
                    self._finish(conn, parent_id, finish(_event(parent), Draft.model_validate(draft), results), "sweep")
            pending = conn.execute(
                "SELECT parent_event_id, result FROM parked_tasks WHERE finished_by = 'sweep' AND NOT delivered"
            ).fetchall()
            conn.execute(
                "DELETE FROM parked_tasks WHERE finished_at < %s::timestamptz - make_interval(secs => %s)"
                " AND (delivered OR finished_by = 'answers')",
                (now, self._retention_s),
            )
        return [(parent_id, _outgoing(result)) for parent_id, result in pending]

    def delivered(self, parent_ids: Sequence[UUID]) -> None:
        """The sweep's final events for these parents are on the broker."""
        if parent_ids:
            with self._pool.connection() as conn:
                conn.execute(
                    "UPDATE parked_tasks SET delivered = true WHERE parent_event_id = ANY(%s)", (list(parent_ids),)
                )

    def open_count(self) -> int:
        with self._pool.connection() as conn:
            (count,) = conn.execute("SELECT count(*) FROM parked_tasks WHERE result IS NULL").fetchone()
        return int(count)

    @staticmethod
    def _finish(conn, parent_id: UUID, out: Outgoing, by: str) -> None:  # type: ignore[no-untyped-def]
        stored = {"topic": out.topic.value, "key": out.key, "event": out.event.model_dump(mode="json")}
        conn.execute(
            "UPDATE parked_tasks SET result = %s, finished_by = %s, finished_at = now() WHERE parent_event_id = %s",
            (Jsonb(stored), by, parent_id),
        )


def _outgoing(stored: dict) -> Outgoing:
    return Outgoing(Topic(stored["topic"]), stored["key"], _event(stored["event"]))


class DeadlineSweeper:
    """Runs `ParkingLot.sweep` every `interval_s` in its own thread and publishes what it finished."""

    def __init__(
        self,
        sweep: Callable[[], list[tuple[UUID, Outgoing]]],
        delivered: Callable[[Sequence[UUID]], None],
        producer: EventProducer,
        interval_s: float,
    ) -> None:
        self._sweep = sweep
        self._delivered = delivered
        self._producer = producer
        self._interval_s = interval_s
        self._stop = threading.Event()

    def run_once(self) -> int:
        finished = self._sweep()
        if not finished:
            return 0
        for _, out in finished:
            self._producer.send(out)
        self._producer.flush()
        self._delivered([parent_id for parent_id, _ in finished])
        log.info("parked answers finished at their deadline", count=len(finished))
        return len(finished)

    def run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.run_once()
            except Exception as exc:  # database or broker away: try again next round, never kill the service
                log.warning("deadline sweep failed", error=repr(exc))

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="deadline-sweeper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
