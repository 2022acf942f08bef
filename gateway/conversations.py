"""Conversations: turns projected from the log (the `requests` table), follow-up context, and request submission.

A conversation's history is the requests projection filtered by `conversation_id`: each row is a RequestReceived
the gateway published, completed by the projected RoutingDecided/AnswerProduced. Nothing here is primary state.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from psycopg_pool import ConnectionPool

from smolit.contracts import RequestReceived, Topic
from smolit.infra.kafka import Outgoing

from .auth import ChatCaller

if TYPE_CHECKING:
    from .app import GatewayDeps

CONTEXT_TURNS = 3
"""Earlier user turns sent with a follow-up (the router scores it with the last one)."""
HISTORY_LIMIT = 50
SMALL_TALK_BACKEND = "smalltalk"
"""Backend of small-talk replies: such turns are no topic, so they are neither context nor the previous agent."""


@dataclass(frozen=True)
class Turn:
    request_id: uuid.UUID
    text: str
    created_at: datetime
    status: str
    agent: str | None
    answer: str | None
    backend: str | None

    @property
    def small_talk(self) -> bool:
        return self.backend == SMALL_TALK_BACKEND

    def view(self) -> dict[str, Any]:
        return {
            "request_id": str(self.request_id),
            "text": self.text,
            "created_at": self.created_at.isoformat(),
            "status": self.status,
            "agent": self.agent,
            "answer": self.answer,
        }


def load_turns(pool: ConnectionPool, conversation_id: str, limit: int = HISTORY_LIMIT) -> list[Turn]:
    """The conversation's last `limit` turns, oldest first."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT request_id, text, created_at, outcome FROM requests WHERE conversation_id = %s"
            " ORDER BY created_at DESC LIMIT %s",
            (conversation_id, limit),
        ).fetchall()
    turns = []
    for request_id, text, created_at, outcome in reversed(rows):
        answer = (outcome or {}).get("answer") or {}
        decision = (outcome or {}).get("decision") or {}
        turns.append(
            Turn(
                request_id=request_id,
                text=text,
                created_at=created_at,
                status=answer.get("status", "pending"),
                agent=answer.get("agent") or decision.get("agent"),
                answer=answer.get("answer"),
                backend=answer.get("backend"),
            )
        )
    return turns


def context_from(turns: list[Turn]) -> tuple[tuple[str, ...], str | None]:
    """(earlier user texts, agent of the last answered turn) for the next turn; small talk counts as neither."""
    topical = [t for t in turns if t.status == "answered" and not t.small_talk]
    context = tuple(t.text for t in topical[-CONTEXT_TURNS:])
    return context, topical[-1].agent if topical else None


def conversation_context(pool: ConnectionPool, conversation_id: str) -> tuple[tuple[str, ...], str | None]:
    return context_from(load_turns(pool, conversation_id, CONTEXT_TURNS * 3))


async def submit(deps: GatewayDeps, event: RequestReceived, marks: dict[str, float] | None = None) -> dict[str, Any]:
    """Record the request, publish it and wait for its decision and answer.

    Raises TimeoutError after `request_timeout_s` (the request stays recorded and may still be answered) and
    RuntimeError when the broker rejects the request. `marks["published"]`: perf_counter when the event was handed
    to the producer (the gateway's own time ends there until the answer arrives).
    """
    request_id = event.request_id
    await run_in_threadpool(_record, deps.pool, request_id, event.conversation_id, event.text)
    future = deps.pending.expect(request_id)

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            deps.pending.fail(request_id, RuntimeError(f"broker rejected the request: {err}"))

    deps.producer.send(Outgoing(Topic.REQUESTS, event.conversation_id, event), on_delivery=delivered)
    if marks is not None:
        marks["published"] = time.perf_counter()
    try:
        return await asyncio.wait_for(future, deps.request_timeout_s)
    except TimeoutError:
        deps.pending.forget(request_id)
        raise


def _record(pool: ConnectionPool, request_id: uuid.UUID, conversation: str, text: str) -> None:
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO requests (request_id, conversation_id, text) VALUES (%s, %s, %s)",
            (request_id, conversation, text),
        )


def _web_chat_page() -> str:
    from importlib.resources import files

    return (files("smolit.gateway") / "static" / "index.html").read_text(encoding="utf-8")


def create_conversations_router(deps: GatewayDeps) -> APIRouter:
    router = APIRouter()
    page = _web_chat_page()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def web_chat() -> HTMLResponse:
        return HTMLResponse(page)

    @router.get("/v1/conversations/{conversation_id}", tags=["conversations"])
    async def conversation(conversation_id: str, _p: ChatCaller) -> JSONResponse:
        """The conversation's turns (request, agent, answer), oldest first, as projected from the log."""
        turns = await run_in_threadpool(load_turns, deps.pool, conversation_id)
        if not turns:
            return JSONResponse({"detail": f"unknown conversation {conversation_id!r}"}, status_code=404)
        return JSONResponse({"conversation_id": conversation_id, "turns": [t.view() for t in turns]})

    return router
