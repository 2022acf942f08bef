"""HTTP edge: native request API, feedback, health and metrics."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
import structlog
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel, ConfigDict, Field, field_validator

from smolit.contracts import IMAGE_MEDIA_TYPES, AgentCard, Attachment, RequestReceived, Topic, check_model_hints
from smolit.infra.heartbeat import service_statuses
from smolit.infra.kafka import EventProducer, Outgoing

from .auth import (
    Authenticator,
    ChatCaller,
    FeedbackCaller,
    admin_router,
    check_agent,
    install_error_handler,
    routable_agents,
)
from .conversations import conversation_context, create_conversations_router
from .feedback import (
    FeedbackBody,
    InferredRating,
    RatingInference,
    RatingUnavailable,
    claim,
    feedback_event,
    load_request_ref,
    release,
)
from .guard import PromptGuard, screen_prompt
from .limits import BodyLimit
from .openai_api import create_openai_router
from .pending import PendingRequests

log = structlog.get_logger("smolit.gateway")

REQUIRED_SERVICES = ("router", "agents", "streams", "gateway", "learner")
HEARTBEAT_MAX_AGE_S = 10.0
MAX_BODY_BYTES = 256 * 1024
PUBLISH_TIMEOUT_S = 10.0


class GatewayMetrics(NamedTuple):
    requests: Counter
    request_seconds: Histogram
    answers: Counter
    feedback: Counter
    feedback_duplicates: Counter
    ratings_inferred: Counter
    rating_inference_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        return cls(
            requests=Counter(
                "smolit_gateway_requests_total", "HTTP requests to POST /v1/requests", ["status"], registry=registry
            ),
            request_seconds=Histogram(
                "smolit_gateway_request_seconds",
                "POST /v1/requests latency until the answer, per answering agent",
                ["agent"],
                registry=registry,
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
            answers=Counter(
                "smolit_gateway_answers_total",
                "Answers returned to HTTP callers, per agent and outcome (answered, failed)",
                ["agent", "outcome"],
                registry=registry,
            ),
            feedback=Counter(
                "smolit_feedback_total",
                "Feedback accepted, per agent and sentiment (positive, neutral, negative)",
                ["agent", "sentiment"],
                registry=registry,
            ),
            feedback_duplicates=Counter(
                "smolit_feedback_duplicates_total",
                "Repeated feedback from the same user on the same request (not published)",
                registry=registry,
            ),
            ratings_inferred=Counter(
                "smolit_feedback_ratings_inferred_total",
                "Comment-only feedback, per sentiment model version and outcome"
                " (inferred, low_confidence, unavailable, timeout)",
                ["model", "version", "outcome"],
                registry=registry,
            ),
            rating_inference_seconds=Histogram(
                "smolit_feedback_rating_inference_seconds",
                "Time to infer a rating from a comment (model load included on the first call)",
                registry=registry,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 15, 30),
            ),
        )


class AttachmentBody(BaseModel):
    """One image sent with a request."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="File name.")
    media_type: str = Field(description="image/png, image/jpeg, image/tiff or image/bmp.")
    data: str = Field(min_length=1, description="The file, base64.")

    @field_validator("media_type")
    @classmethod
    def _image(cls, value: str) -> str:
        if value not in IMAGE_MEDIA_TYPES:
            raise ValueError(f"unsupported attachment type {value!r}; supported: {sorted(IMAGE_MEDIA_TYPES)}")
        return value


def decoded_size(attachment: AttachmentBody) -> int:
    """Bytes of the decoded file. Raises ValueError for data that is not base64."""
    try:
        return len(base64.b64decode(attachment.data, validate=True))
    except binascii.Error as exc:
        raise ValueError(f"attachment {attachment.name!r} is not valid base64: {exc}") from exc


class AskBody(BaseModel):
    """A request to Smolit."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The question or task.")
    conversation_id: str | None = Field(default=None, max_length=200, description="Groups turns of one chat.")
    user: str | None = Field(default=None, max_length=200)
    agent: str | None = Field(default=None, description="Ask this agent directly instead of routing.")
    attachments: list[AttachmentBody] = Field(
        default_factory=list,
        description="Images (png, jpeg, tiff, bmp; base64) read by agents whose card has `pipeline.request: [ocr]`.",
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description='Pipeline step -> registered model to use (e.g. {"ocr": "smolit-ocr-upscale"}); the agent '
        "follows it when the model is one of its card's candidates for the step.",
    )

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: dict[str, str]) -> dict[str, str]:
        return check_model_hints(value)

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
    auth: Authenticator | None = None
    """API keys, scopes and rate limits; `None`: anonymous loopback use, no limits (tests, dev)."""
    guard: PromptGuard | None = None
    """Prompt filter applied before routing; `None`: no screening."""
    retired: Callable[[], frozenset[str]] = frozenset
    """Agents retired on the agent-lifecycle topic (requests naming them: 410); default: none."""
    max_attachments: int = 4
    """Most attachments per request (more: 422)."""
    max_attachment_bytes: int = 196_608
    """Largest total decoded attachment size per request (larger: 413)."""
    infer_rating: RatingInference | None = None
    """Sentiment model behind comment-only feedback; `None`: a rating is required (422 without one)."""
    sentiment_min_confidence: float = 0.7
    """Inferred ratings below this confidence are refused (422: the user should rate)."""
    sentiment_timeout_s: float = 15.0
    """Longest rating inference (503 past it)."""


async def _infer_rating(comment: str, deps: GatewayDeps, gm: GatewayMetrics) -> InferredRating:
    """The rating a comment implies, or an HTTPException a user can act on (send a rating, or retry)."""
    if deps.infer_rating is None:
        gm.ratings_inferred.labels("", "", "unavailable").inc()
        raise HTTPException(422, "feedback needs a rating: this gateway has no sentiment model to infer one")
    started = time.perf_counter()
    try:
        inferred = await asyncio.wait_for(run_in_threadpool(deps.infer_rating, comment), deps.sentiment_timeout_s)
    except TimeoutError as exc:  # the worker thread finishes (and caches the model) on its own
        gm.ratings_inferred.labels("", "", "timeout").inc()
        raise HTTPException(
            503,
            f"inferring the rating took longer than {deps.sentiment_timeout_s:g} s (SMOLIT_SENTIMENT_TIMEOUT_S);"
            " retry, or send a rating",
        ) from exc
    except RatingUnavailable as exc:
        gm.ratings_inferred.labels("", "", "unavailable").inc()
        raise HTTPException(422, f"feedback needs a rating: none can be inferred from the comment ({exc})") from exc
    gm.rating_inference_seconds.observe(time.perf_counter() - started)
    if inferred.confidence < deps.sentiment_min_confidence:
        gm.ratings_inferred.labels(inferred.name, inferred.version, "low_confidence").inc()
        raise HTTPException(
            422,
            f"could not tell the rating from the comment: {inferred.name} v{inferred.version} says {inferred.label}"
            f" with confidence {inferred.confidence:.2f}, below {deps.sentiment_min_confidence:g}"
            " (SMOLIT_SENTIMENT_MIN_CONFIDENCE); send a rating with it",
        )
    gm.ratings_inferred.labels(inferred.name, inferred.version, "inferred").inc()
    return inferred


def _check_attachments(body: AskBody, deps: GatewayDeps, counter: Counter) -> tuple[Attachment, ...]:
    """The request's attachments as event payloads, or a 422 (count, base64) / 413 (total size) naming the limit."""
    if not body.attachments:
        return ()
    if len(body.attachments) > deps.max_attachments:
        counter.labels("422").inc()
        raise HTTPException(
            422,
            f"{len(body.attachments)} attachments; the limit is {deps.max_attachments}"
            " (setting SMOLIT_MAX_ATTACHMENTS)",
        )
    try:
        total = sum(decoded_size(a) for a in body.attachments)
    except ValueError as exc:
        counter.labels("422").inc()
        raise HTTPException(422, str(exc)) from exc
    if total > deps.max_attachment_bytes:
        counter.labels("413").inc()
        raise HTTPException(
            413,
            f"attachments total {total} bytes; the limit is {deps.max_attachment_bytes}"
            " (setting SMOLIT_MAX_ATTACHMENT_BYTES)",
        )
    return tuple(Attachment(name=a.name, media_type=a.media_type, data=a.data) for a in body.attachments)


def create_app(deps: GatewayDeps) -> FastAPI:
    app = FastAPI(title="Smolit gateway", version="0.1.0")
    gm = GatewayMetrics.create(deps.registry)
    http_requests = gm.requests
    app.state.auth = deps.auth or Authenticator(keys=None, required=False)
    app.state.guard = deps.guard
    install_error_handler(app)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # Nothing was accepted: the client may retry the same call once the database is back.
        log.warning("database unavailable", error=" ".join(str(exc).split())[:300])
        return JSONResponse(
            {"detail": "the database is unavailable; nothing was recorded, retry shortly"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    app.include_router(admin_router)
    # Base64 attachments grow a body by 4/3; the attachment check below names the setting when they are too big.
    max_body = MAX_BODY_BYTES + (deps.max_attachment_bytes * 4 // 3 + 1024 if deps.max_attachments else 0)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, larger={"/v1/requests": max_body})

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Any]) -> Response:
        length = request.headers.get("content-length")
        limit = max_body if request.url.path == "/v1/requests" else MAX_BODY_BYTES
        if length is not None and length.isdigit() and int(length) > limit:
            return JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
        return await call_next(request)

    @app.post("/v1/requests")
    async def ask(request: Request, body: AskBody, principal: ChatCaller) -> JSONResponse:
        if len(body.text) > deps.max_request_chars:
            http_requests.labels("413").inc()
            raise HTTPException(
                413,
                f"text has {len(body.text)} characters; the limit is {deps.max_request_chars}"
                " (setting SMOLIT_MAX_REQUEST_CHARS)",
            )
        attachments = _check_attachments(body, deps, http_requests)
        if body.agent is not None and body.agent not in deps.cards:
            http_requests.labels("422").inc()
            raise HTTPException(422, f"unknown agent {body.agent!r}; known: {sorted(deps.cards)}")
        if body.agent is not None and body.agent in deps.retired():
            http_requests.labels("410").inc()
            raise HTTPException(
                410, f"agent {body.agent!r} is retired; ask without naming an agent, or name another one"
            )
        if body.agent is not None:
            check_agent(principal, body.agent, deps.cards)
        allowed = routable_agents(principal, deps.cards)
        embedding = await screen_prompt(request, body.text, principal)
        started = time.perf_counter()
        request_id = uuid.uuid4()
        conversation = body.conversation_id or str(request_id)
        context, previous = (), None
        if body.conversation_id is not None:  # a follow-up: route and answer it with the conversation's turns
            context, previous = await run_in_threadpool(conversation_context, deps.pool, conversation)
        event = RequestReceived(
            correlation_id=request_id,
            producer="gateway",
            conversation_id=conversation,
            text=body.text,
            user=body.user,
            agent=body.agent,
            context=context,
            previous_agent=previous,
            allowed_agents=allowed,
            embedding=embedding,
            attachments=attachments,
            model_hints=body.models,
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
        view = _view(request_id, conversation, outcome, elapsed_ms)
        agent = view["agent"] or ""
        gm.request_seconds.labels(agent).observe(elapsed_ms / 1000)
        gm.answers.labels(agent, view["status"]).inc()
        http_requests.labels("200").inc()
        log.info(
            "request handled",
            request_id=str(request_id),
            agent=agent,
            outcome=view["status"],
            duration_ms=round(elapsed_ms, 2),
        )
        return JSONResponse(view)

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackBody, _p: FeedbackCaller) -> JSONResponse:
        if body.preferred_agent is not None and body.preferred_agent not in deps.cards:
            raise HTTPException(422, f"unknown agent {body.preferred_agent!r}; known: {', '.join(sorted(deps.cards))}")
        ref = await run_in_threadpool(load_request_ref, deps.pool, body.request_id)
        if ref is None:
            raise HTTPException(404, f"unknown request id {body.request_id}")
        inferred = await _infer_rating(body.comment or "", deps, gm) if body.rating is None else None
        event = feedback_event(body, ref, inferred)
        earlier = await run_in_threadpool(claim, deps.pool, event)
        result = {"request_id": str(body.request_id), "agent": ref.agent}
        if earlier is not None:  # the earlier feedback stands; this one is not published
            gm.feedback_duplicates.inc()
            log.info("feedback handled", request_id=str(body.request_id), user=body.user, outcome="duplicate")
            return JSONResponse(result | {"feedback_id": str(earlier), "duplicate": True})
        try:
            await _publish(deps.producer, Outgoing(Topic.FEEDBACK, str(body.request_id), event))
        except (RuntimeError, TimeoutError) as exc:
            await run_in_threadpool(release, deps.pool, event)  # not recorded: the user may send it again
            raise HTTPException(503, f"feedback not recorded: {exc}") from exc
        gm.feedback.labels(ref.agent or "", event.sentiment).inc()
        log.info(
            "feedback handled",
            request_id=str(body.request_id),
            agent=ref.agent,
            user=body.user,
            rating=event.rating,
            inferred_by=f"{inferred.name}@{inferred.version}" if inferred else None,
            outcome="published",
        )
        body_out = result | {
            "feedback_id": str(event.event_id),
            "sentiment": event.sentiment,
            "rating": event.rating,
            "duplicate": False,
        }
        if inferred is not None:
            body_out["inferred"] = {
                "model": inferred.name,
                "version": inferred.version,
                "confidence": round(inferred.confidence, 4),
            }
        return JSONResponse(body_out, status_code=201)

    @app.get("/v1/requests/{request_id}")
    async def get_request(request_id: uuid.UUID, _p: ChatCaller) -> JSONResponse:
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

    app.include_router(create_openai_router(deps))
    app.include_router(create_conversations_router(deps))
    return app


async def _publish(producer: EventProducer, out: Outgoing) -> None:
    """Produce one event and wait for the broker's acknowledgement (served by the process's poll thread)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(err: Any, _msg: Any) -> None:
        def resolve() -> None:
            if done.done():
                return
            if err is None:
                done.set_result(None)
            else:
                done.set_exception(RuntimeError(f"broker rejected the event: {err}"))

        loop.call_soon_threadsafe(resolve)

    producer.send(out, on_delivery=settle)
    await asyncio.wait_for(done, PUBLISH_TIMEOUT_S)


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
        "models": answer.get("models", []),
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
