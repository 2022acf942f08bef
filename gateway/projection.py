"""Answer projection: decisions and answers from the log into the `requests` table and waiting HTTP calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from smolit.contracts import AnswerProduced, Event, RoutingDecided, TaskFailed
from smolit.infra.kafka import Outgoing, RetryableError

from .pending import PendingRequests


def decision_view(event: RoutingDecided) -> dict[str, Any]:
    return {
        "agent": event.agent,
        "score": event.score,
        "scores": event.scores,
        "low_confidence": event.low_confidence,
        "model_version": event.model_version,
        "routing_ms": round(event.latency_ms, 3),
        "small_talk": event.small_talk,
        "context_used": event.context_used,
    }


def answer_view(event: AnswerProduced | TaskFailed) -> dict[str, Any]:
    if isinstance(event, TaskFailed):
        return {
            "event_id": str(event.event_id),
            "status": "failed",
            "agent": event.agent,
            "error": event.reason,
            "answer": None,
            "sources": [],
        }
    return {
        "event_id": str(event.event_id),
        "status": "answered",
        "agent": event.agent,
        "answer": event.answer,
        "sources": [s.model_dump() for s in event.sources],
        "backend": event.backend,
        "model": event.model,
        "tokens": {"prompt": event.prompt_tokens, "completion": event.completion_tokens},
        "cost_usd": event.cost_usd,
        "agent_ms": round(event.latency_ms, 3),
        "answered_at": event.occurred_at.isoformat(),
        "models": [m.model_dump() for m in event.models],
    }


class AnswerProjection:
    """Consumer-loop handler for the decisions and answers topics (idempotent: first answer wins)."""

    def __init__(self, pool: ConnectionPool, pending: PendingRequests) -> None:
        self._pool = pool
        self._pending = pending

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        decisions: list[tuple[Any, dict[str, Any]]] = []
        answers: list[tuple[Any, dict[str, Any]]] = []
        for event in events:
            if isinstance(event, RoutingDecided):
                decisions.append((event.correlation_id, decision_view(event)))
            elif isinstance(event, AnswerProduced | TaskFailed):
                answers.append((event.correlation_id, answer_view(event)))
            # SubqueryAnswered and others on these topics are not user-facing: nothing to project.
        self._store(decisions, answers)
        for request_id, view in decisions:
            self._pending.on_decision(request_id, view)
        for request_id, view in answers:
            self._pending.on_answer(request_id, view)
        return []

    def _store(self, decisions: list[tuple[Any, dict[str, Any]]], answers: list[tuple[Any, dict[str, Any]]]) -> None:
        if not decisions and not answers:
            return
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                if decisions:
                    cur.executemany(
                        "UPDATE requests SET outcome = jsonb_set(coalesce(outcome, '{}'), '{decision}', %s)"
                        " WHERE request_id = %s AND (outcome IS NULL OR NOT outcome ? 'decision')",
                        [(Jsonb(view), rid) for rid, view in decisions],
                    )
                if answers:
                    cur.executemany(
                        "UPDATE requests SET answered_at = now(),"
                        " outcome = jsonb_set(coalesce(outcome, '{}'), '{answer}', %s)"
                        " WHERE request_id = %s AND answered_at IS NULL",
                        [(Jsonb(view), rid) for rid, view in answers],
                    )
        except psycopg.OperationalError as exc:
            raise RetryableError(f"answer projection write failed: {exc}") from exc
