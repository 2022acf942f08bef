"""HTTP edge: native request API, health and metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from smolit.contracts import AgentCard, RequestReceived, Topic
from smolit.infra.heartbeat import service_statuses
from smolit.infra.kafka import EventProducer, Outgoing

from .pending import PendingRequests

REQUIRED_SERVICES = ("router", "agents", "streams", "gateway")
HEARTBEAT_MAX_AGE_S = 10.0
MAX_BODY_BYTES = 256 * 1024


class AskBody(BaseModel):
    """A request to Smolit."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The question or task.")
    conversation_id: str | None = Field(default=None, max_length=200, description="Groups turns of one chat.")
    user: str | None = Field(default=None, max_length=200)
    agent: str | None = Field(default=None, description="Ask this agent directly instead of routing.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be empty")
        return value.strip()


@dataclass
class GatewayDeps:
    producer: EventProducer
    pool: ConnectionPool
    pending: PendingRequests
    cards: Mapping[str, AgentCard]
    registry: CollectorRegistry
    broker_check: Callable[[], None]
    """Raises when the broker does not answer."""
    request_timeout_s: float
    max_request_chars: int


def create_app(deps: GatewayDeps) -> FastAPI:
    app = FastAPI(title="Smolit gateway", version="0.1.0")
    http_requests = Counter(
        "smolit_gateway_requests_total", "Requests through the gateway", ["status"], registry=deps.registry
    )
    latency = Histogram(
        "smolit_gateway_request_seconds",
        "POST /v1/requests latency",
        registry=deps.registry,
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Any]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    @app.post("/v1/requests")
    async def ask(body: AskBody) -> JSONResponse:
        if len(body.text) > deps.max_request_chars:
            http_requests.labels("413").inc()
            raise HTTPException(
                413,
                f"text has {len(body.text)} characters; the limit is {deps.max_request_chars}"
                " (setting SMOLIT_MAX_REQUEST_CHARS)",
            )
        if body.agent is not None and body.agent not in deps.cards:
            http_requests.labels("422").inc()
            raise HTTPException(422, f"unknown agent {body.agent!r}; known: {sorted(deps.cards)}")
        started = time.perf_counter()
        request_id = uuid.uuid4()
        conversation = body.conversation_id or str(request_id)
        event = RequestReceived(
            correlation_id=request_id,
            producer="gateway",
            conversation_id=conversation,
            text=body.text,
            user=body.user,
            agent=body.agent,
        )
        await run_in_threadpool(_record_request, deps.pool, request_id, conversation, body.text)
        future = deps.pending.expect(request_id)

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                deps.pending.fail(request_id, RuntimeError(f"broker rejected the request: {err}"))

        deps.producer.send(Outgoing(Topic.REQUESTS, conversation, event), on_delivery=delivered)
        try:
            outcome = await asyncio.wait_for(future, deps.request_timeout_s)
        except TimeoutError:
            deps.pending.forget(request_id)
            http_requests.labels("504").inc()
            return JSONResponse(
                {
                    "request_id": str(request_id),
                    "status": "pending",
                    "detail": f"no answer within {deps.request_timeout_s}s; fetch it later from"
                    f" GET /v1/requests/{request_id}",
                },
                status_code=504,
            )
        except RuntimeError as exc:
            http_requests.labels("503").inc()
            raise HTTPException(503, str(exc)) from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        latency.observe(elapsed_ms / 1000)
        http_requests.labels("200").inc()
        return JSONResponse(_view(request_id, conversation, outcome, elapsed_ms))

    @app.get("/v1/requests/{request_id}")
    async def get_request(request_id: uuid.UUID) -> JSONResponse:
        row = await run_in_threadpool(_load_request, deps.pool, request_id)
        if row is None:
            raise HTTPException(404, f"unknown request id {request_id}")
        conversation, outcome, created, answered = row
        if answered is None:
            return JSONResponse({"request_id": str(request_id), "status": "pending"}, status_code=202)
        elapsed_ms = (answered - created).total_seconds() * 1000
        return JSONResponse(_view(request_id, conversation, outcome or {}, elapsed_ms))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        report = await run_in_threadpool(_health, deps)
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(deps.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _view(request_id: uuid.UUID, conversation: str, outcome: dict[str, Any], elapsed_ms: float) -> dict[str, Any]:
    decision = outcome.get("decision") or {}
    answer = outcome.get("answer") or {}
    return {
        "request_id": str(request_id),
        "conversation_id": conversation,
        "status": answer.get("status", "pending"),
        "agent": answer.get("agent") or decision.get("agent"),
        "answer": answer.get("answer"),
        "error": answer.get("error"),
        "sources": answer.get("sources", []),
        "score": decision.get("score"),
        "scores": decision.get("scores", {}),
        "low_confidence": decision.get("low_confidence"),
        "latency_ms": round(elapsed_ms, 3),
        "routing_ms": decision.get("routing_ms"),
        "agent_ms": answer.get("agent_ms"),
        "backend": answer.get("backend"),
        "tokens": answer.get("tokens"),
    }


def _record_request(pool: ConnectionPool, request_id: uuid.UUID, conversation: str, text: str) -> None:
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO requests (request_id, conversation_id, text) VALUES (%s, %s, %s)",
            (request_id, conversation, text),
        )


def _load_request(pool: ConnectionPool, request_id: uuid.UUID) -> tuple[Any, ...] | None:
    with pool.connection() as conn:
        return conn.execute(
            "SELECT conversation_id, outcome, created_at, answered_at FROM requests WHERE request_id = %s",
            (request_id,),
        ).fetchone()


def _health(deps: GatewayDeps) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        deps.broker_check()
        checks["broker"] = {"ok": True}
    except Exception as exc:
        checks["broker"] = {"ok": False, "error": str(exc)}
    services: dict[str, Any] = {}
    try:
        with deps.pool.connection(timeout=3) as conn:
            conn.execute("SELECT 1")
        checks["database"] = {"ok": True}
        statuses = service_statuses(deps.pool)
    except psycopg.Error as exc:
        checks["database"] = {"ok": False, "error": str(exc).strip()}
        statuses = []
    for name in REQUIRED_SERVICES:
        alive = [s for s in statuses if s.service == name and s.age_s <= HEARTBEAT_MAX_AGE_S]
        services[name] = {"ok": bool(alive), "instances": len(alive)}
    checks["services"] = services
    ok = checks["broker"]["ok"] and checks["database"]["ok"] and all(s["ok"] for s in services.values())
    return {"status": "ok" if ok else "degraded", "checks": checks}
