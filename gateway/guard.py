"""Screens request texts with the prompt filter; a blocked request answers 400 and is recorded as `RequestBlocked`.

Call `await screen_prompt(request, text, principal)` from any route before the text goes to the router (the OpenAI
chat route screens its last user message the same way).
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import structlog
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Counter

from smolit.contracts import RequestBlocked, Topic, pack_vector
from smolit.infra.kafka import EventProducer, Outgoing

from .auth import ApiError, Principal
from .prompt_filter import PromptFilter, Verdict

log = structlog.get_logger("smolit.gateway")
MAX_RECORDED_CHARS = 2000


class GuardMetrics(NamedTuple):
    blocked: Counter
    moderation_errors: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GuardMetrics:
        return cls(
            blocked=Counter(
                "smolit_requests_blocked_total",
                "Requests the prompt filter blocked, per reason code",
                ["reason"],
                registry=registry,
            ),
            moderation_errors=Counter(
                "smolit_moderation_errors_total",
                "Moderation API calls that failed (the request was let through: the filter fails open)",
                registry=registry,
            ),
        )


class PromptGuard:
    """The filter plus what a block does: publish `RequestBlocked` on the audit topic, count it, answer 400."""

    def __init__(self, flt: PromptFilter, producer: EventProducer, metrics: GuardMetrics) -> None:
        self.filter = flt
        self._producer = producer
        self._metrics = metrics

    def _check(self, text: str) -> Verdict:
        try:
            return self.filter.check_after_rules(text)
        except Exception as exc:  # only the moderation API can fail here; similarity has run
            self._metrics.moderation_errors.inc()
            log.warning("moderation failed; request let through", error=str(exc))
            return Verdict(False)

    async def screen(self, text: str, principal: Principal | None) -> str | None:
        """Raises `ApiError(400)` for a blocked text; otherwise returns its embedding in wire form when the filter
        computed one (for `RequestReceived.embedding`), else None."""
        # Rules and the static prescreen run inline (~0.1 ms): most texts never pay the worker-thread hop.
        verdict = self.filter.decide_cheaply(text)
        if verdict is None:  # the MiniLM encode or the moderation call: off the event loop
            verdict = await run_in_threadpool(self._check, text)
        if not verdict.blocked:
            return pack_vector(verdict.embedding.tolist()) if verdict.embedding is not None else None
        request_id = uuid.uuid4()
        event = RequestBlocked(
            correlation_id=request_id,
            producer="gateway",
            reason=verdict.reason,
            detail=verdict.detail[:200],
            score=verdict.score,
            text=text[:MAX_RECORDED_CHARS],
            key_id=principal.key_id if principal else None,
            client=principal.client if principal else None,
        )
        self._metrics.blocked.labels(verdict.reason).inc()

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:  # the 400 stands; the audit record's loss is logged, not hidden
                log.error("RequestBlocked not recorded", request_id=str(request_id), error=str(err))

        self._producer.send(Outgoing(Topic.AUDIT, principal.identity if principal else "anonymous", event), delivered)
        log.info("request blocked", request_id=str(request_id), reason=verdict.reason, detail=verdict.detail[:80])
        raise ApiError(
            400,
            verdict.reason,
            f"request blocked by the prompt filter ({verdict.reason}); request id {request_id}",
        )


async def screen_prompt(request: Request, text: str, principal: Principal | None = None) -> str | None:
    """Screen `text` with the app's guard (`app.state.guard`; none configured: nothing is screened). Returns the
    text's embedding (wire form) when the filter computed one: pass it as `RequestReceived.embedding`."""
    guard: PromptGuard | None = getattr(request.app.state, "guard", None)
    if guard is None:
        return None
    return await guard.screen(text, principal)
