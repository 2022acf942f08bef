"""OpenAI-compatible chat API: `POST /v1/chat/completions` (plain and SSE streaming) and `GET /v1/models`.

Model `smolit` routes automatically; `smolit/<agent>` asks that agent. The messages list is the conversation: the
last user message is the request, the earlier user messages are its context. Errors use OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` so OpenAI clients raise their usual exceptions.

Streaming is honest about the pipeline: agents publish a whole answer as one AnswerProduced event, so the stream
starts when that event arrives (time to first token = pipeline latency) and then sends the answer in word groups.
Waiting for the answer before the response starts also lets a timeout or a failure answer with a real HTTP status.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal

import structlog
from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field

from smolit.contracts import RequestReceived

from .auth import ChatCaller, Principal, check_agent, routable_agents
from .conversations import CONTEXT_TURNS, conversation_context, submit
from .guard import screen_prompt

if TYPE_CHECKING:
    from .app import GatewayDeps

log = structlog.get_logger("smolit.gateway")

MODEL = "smolit"
"""Automatic routing; `smolit/<agent>` names one agent."""
WORDS_PER_CHUNK = 6
CONVERSATION_HEADER = "X-Smolit-Conversation"
OWNED_BY = "smolit"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts carry a question
            return " ".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text").strip()
        return (self.content or "").strip()


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; sampling parameters (temperature, max_tokens, ...) are accepted and ignored:
    each agent's card sets its own."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="`smolit` (automatic routing) or `smolit/<agent>`.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=200, description="Conversation id unless the header sets one.")


class OpenAIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class OpenAIRoute(APIRoute):
    """Validation and our own errors in OpenAI's error shape instead of FastAPI's `{"detail": ...}`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return exc.response()
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()
                )
                return OpenAIError(
                    400, f"invalid request: {problems}", "invalid_request_error", "invalid_request"
                ).response()

        return shaped


def resolve_model(model: str, agents: set[str], retired: frozenset[str] = frozenset()) -> str | None:
    """The agent a model id names (None: automatic routing); raises OpenAIError 404 for an unknown or retired model."""
    if model == MODEL:
        return None
    prefix = f"{MODEL}/"
    if model.startswith(prefix) and model[len(prefix) :] in retired:
        raise OpenAIError(
            404, f"The model {model!r} is retired (its agent was retired)", "invalid_request_error", "model_not_found"
        )
    agents = agents - retired
    if model.startswith(prefix) and model[len(prefix) :] in agents:
        return model[len(prefix) :]
    known = ", ".join([MODEL, *(prefix + a for a in sorted(agents))])
    raise OpenAIError(
        404, f"The model {model!r} does not exist; known: {known}", "invalid_request_error", "model_not_found"
    )


def split_messages(messages: list[ChatMessage]) -> tuple[str, tuple[str, ...]]:
    """(request text, context): the last message must be the user's; earlier user messages are the context."""
    last = messages[-1]
    if last.role != "user" or not last.text():
        raise OpenAIError(
            400, "the last message must be a non-empty user message", "invalid_request_error", "invalid_messages"
        )
    earlier = [m.text() for m in messages[:-1] if m.role == "user" and m.text()]
    return last.text(), tuple(earlier[-CONTEXT_TURNS:])


def chunk_text(answer: str, words: int = WORDS_PER_CHUNK) -> list[str]:
    """Groups of `words` words that join back to `answer` (whitespace kept, trailing whitespace dropped)."""
    tokens = re.findall(r"\s*\S+", answer)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


def extension(request_id: uuid.UUID, conversation: str, outcome: dict[str, Any], elapsed_ms: float) -> dict[str, Any]:
    decision = outcome.get("decision") or {}
    answer = outcome.get("answer") or {}
    return {
        "request_id": str(request_id),
        "conversation_id": conversation,
        "agent": answer.get("agent") or decision.get("agent"),
        "sources": answer.get("sources", []),
        "score": decision.get("score"),
        "low_confidence": decision.get("low_confidence"),
        "small_talk": decision.get("small_talk"),
        "context_used": decision.get("context_used", False),
        "backend": answer.get("backend"),
        "latency_ms": round(elapsed_ms, 3),
        "routing_ms": decision.get("routing_ms"),
        "agent_ms": answer.get("agent_ms"),
    }


def usage(outcome: dict[str, Any]) -> dict[str, int]:
    tokens = (outcome.get("answer") or {}).get("tokens") or {}
    prompt, completion = int(tokens.get("prompt") or 0), int(tokens.get("completion") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_openai_router(deps: GatewayDeps) -> APIRouter:
    router = APIRouter(route_class=OpenAIRoute, tags=["openai"])
    requests = Counter(
        "smolit_gateway_chat_requests_total",
        "Requests to POST /v1/chat/completions",
        ["status", "stream"],
        registry=deps.registry,
    )
    overhead = Histogram(
        "smolit_gateway_chat_overhead_seconds",
        "Gateway time of a chat completion: HTTP in to request published, plus answer resolved to response ready",
        registry=deps.registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
    )

    @router.get("/v1/models")
    async def models(_p: ChatCaller) -> JSONResponse:
        """`smolit` (automatic routing) and `smolit/<agent>` for every agent."""
        ids = [MODEL, *(f"{MODEL}/{a}" for a in sorted(set(deps.cards) - deps.retired()))]
        return JSONResponse(
            {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": OWNED_BY} for i in ids]}
        )

    @router.get("/v1/models/{model:path}")
    async def model(model: str, _p: ChatCaller) -> JSONResponse:
        resolve_model(model, set(deps.cards), deps.retired())
        return JSONResponse({"id": model, "object": "model", "created": 0, "owned_by": OWNED_BY})

    @router.post("/v1/chat/completions")
    async def chat_completions(
        request: Request,
        body: ChatCompletionRequest,
        principal: ChatCaller,
        x_smolit_conversation: str | None = Header(default=None, max_length=200),
    ) -> Response:
        """OpenAI chat completion; `stream: true` answers with server-sent events."""
        stream = "true" if body.stream else "false"
        try:
            return await _complete(request, principal, body, x_smolit_conversation, stream)
        except OpenAIError as exc:
            requests.labels(str(exc.status), stream).inc()
            raise

    async def _complete(
        request: Request,
        principal: Principal,
        body: ChatCompletionRequest,
        header_conversation: str | None,
        stream: str,
    ) -> Response:
        started = time.perf_counter()
        agent = resolve_model(body.model, set(deps.cards), deps.retired())
        text, context = split_messages(body.messages)
        if len(text) > deps.max_request_chars:
            raise OpenAIError(
                413,
                f"the last message has {len(text)} characters; the limit is {deps.max_request_chars}",
                "invalid_request_error",
                "request_too_large",
            )
        # Same gate as the native API: the key's agents, then the prompt filter (before anything is published).
        if agent is not None:
            check_agent(principal, agent, deps.cards)
        allowed = routable_agents(principal, deps.cards)
        embedding = await screen_prompt(request, text, principal)
        request_id = uuid.uuid4()
        conversation = header_conversation or body.user or str(request_id)
        previous = None
        if header_conversation or body.user:  # a known conversation: stay with its agent on follow-ups
            _, previous = await run_in_threadpool(conversation_context, deps.pool, conversation)
        event = RequestReceived(
            correlation_id=request_id,
            producer="gateway",
            conversation_id=conversation,
            text=text,
            user=body.user,
            agent=agent,
            context=context,
            previous_agent=previous,
            allowed_agents=allowed,
            embedding=embedding,
        )
        headers = {"X-Smolit-Request-Id": str(request_id), "X-Smolit-Conversation": conversation}
        marks: dict[str, float] = {}
        try:
            outcome = await submit(deps, event, marks)
        except TimeoutError as exc:
            raise OpenAIError(
                504,
                f"no answer within {deps.request_timeout_s}s; fetch it later from GET /v1/requests/{request_id}",
                "timeout",
                "timeout",
                headers,
            ) from exc
        except RuntimeError as exc:
            raise OpenAIError(503, str(exc), "server_error", "broker_unavailable", headers) from exc
        answered = time.perf_counter()
        elapsed_ms = (answered - started) * 1000
        ext = extension(request_id, conversation, outcome, elapsed_ms)
        headers["X-Smolit-Agent"] = ext["agent"] or ""
        answer = outcome.get("answer") or {}
        if answer.get("status") != "answered":
            raise OpenAIError(
                502, f"agent {ext['agent']} failed: {answer.get('error')}", "server_error", "agent_failed", headers
            )
        requests.labels("200", stream).inc()
        log.info("chat handled", request_id=str(request_id), agent=ext["agent"], stream=body.stream)
        base = {
            "id": f"chatcmpl-{request_id.hex}",
            "created": int(time.time()),
            "model": f"{MODEL}/{ext['agent']}",
            "system_fingerprint": None,
        }
        # The gateway's own time: HTTP in -> request handed to the producer, and answer resolved -> response ready.
        ext["gateway_ms"] = round((marks["published"] - started + time.perf_counter() - answered) * 1000, 3)
        overhead.observe(ext["gateway_ms"] / 1000)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = _sse(base, answer.get("answer") or "", ext, usage(outcome) if include_usage else None)
            return StreamingResponse(
                events, media_type="text/event-stream", headers=headers | {"Cache-Control": "no-cache"}
            )
        return JSONResponse(
            base
            | {
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.get("answer") or ""},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": usage(outcome),
                "smolit": ext,
            },
            headers=headers,
        )

    return router


async def _sse(
    base: dict[str, Any], answer: str, ext: dict[str, Any], usage_: dict[str, int] | None
) -> AsyncIterator[str]:
    chunk = base | {"object": "chat.completion.chunk"}

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps(chunk | {'choices': [choice]} | extra)}\n\n"

    yield event({"role": "assistant", "content": ""}, smolit=ext)
    for part in chunk_text(answer):
        yield event({"content": part})
    yield event({}, "stop", smolit=ext)
    if usage_ is not None:  # OpenAI's stream_options.include_usage: a last chunk with usage and no choices
        yield f"data: {json.dumps(chunk | {'choices': [], 'usage': usage_})}\n\n"
    yield "data: [DONE]\n\n"
