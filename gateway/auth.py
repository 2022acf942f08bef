"""API-key authentication, scopes and per-key rate limits as FastAPI dependencies.

Attach to any route with `Depends(require_scope("chat"))`; the dependency returns the caller's `Principal`. The
`Authenticator` lives on `app.state.auth` (set by `create_app`), so routes defined anywhere need no closure.
Errors are `ApiError`s rendered by `install_error_handler` as JSON: `{"detail": ..., "error": {"code", "message",
"type"}}` (the `error` object is the shape OpenAI clients read).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from smolit.contracts import AgentCard
from smolit.infra.keys import TOKEN_PREFIX, ApiKey, KeyStore

from .ratelimit import RateLimiter, retry_after

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
KEY_CACHE_S = 5.0
"""How long a looked-up key is trusted without asking the database again (a revocation takes effect within it)."""
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An HTTP error with a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(status: int, code: str, message: str) -> dict[str, object]:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"detail": message, "error": {"code": code, "message": message, "type": kind}}


def install_error_handler(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(error_body(exc.status, exc.code, exc.message), exc.status, headers=exc.headers)

    app.add_exception_handler(ApiError, handle)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key, or an anonymous loopback client (dev mode)."""

    scopes: frozenset[str]
    agents: frozenset[str] | None = None
    """Agents the caller may reach; `None`: all."""
    key_id: str | None = None
    name: str | None = None
    client: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    @property
    def identity(self) -> str:
        """Rate-limit bucket: the key, or the client address."""
        return f"key:{self.key_id}" if self.key_id else f"ip:{self.client}"

    def may_reach(self, card: AgentCard) -> bool:
        if self.agents is not None and card.name not in self.agents:
            return False
        return card.required_scope is None or card.required_scope in self.scopes

    def allowed_agents(self, cards: Mapping[str, AgentCard]) -> tuple[str, ...] | None:
        """Agents this caller may reach, for the router; `None` when that is every agent."""
        allowed = tuple(sorted(name for name, card in cards.items() if self.may_reach(card)))
        return None if len(allowed) == len(cards) else allowed


ANONYMOUS_SCOPES = frozenset({"chat", "feedback", "admin"})


@dataclass
class Authenticator:
    """Decides who a request comes from. `required=False` admits anonymous callers (loopback dev mode) but still
    checks a key that is sent."""

    keys: KeyStore | None
    required: bool
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0, 1))
    cards: Mapping[str, AgentCard] = field(default_factory=dict)
    _cache: dict[str, tuple[float, ApiKey | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failing: dict[str, float] = field(default_factory=dict)
    """Client address -> monotonic time until which its unknown keys are refused without a database lookup."""

    @classmethod
    def for_settings(
        cls,
        *,
        mode: str,
        host: str,
        keys: KeyStore | None,
        limiter: RateLimiter,
        cards: Mapping[str, AgentCard],
    ) -> Authenticator:
        required = mode == "required" or not is_loopback(host)
        return cls(keys=keys, required=required, limiter=limiter, cards=cards)

    def _cached(self, token: str) -> tuple[bool, ApiKey | None]:
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and time.monotonic() - hit[0] < KEY_CACHE_S:
            return True, hit[1]
        return False, None

    def _lookup(self, token: str) -> ApiKey | None:
        now = time.monotonic()
        key = self.keys.lookup(token) if self.keys is not None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (now, key)
        return key

    async def authenticate(self, request: Request) -> Principal:
        client = request.client.host if request.client else None
        header = request.headers.get("authorization")
        if header is None:
            if self.required:
                raise ApiError(
                    401,
                    "missing_api_key",
                    "an API key is required: send `Authorization: Bearer <key>` (create one with `smolit keys create`)",
                    {"WWW-Authenticate": "Bearer"},
                )
            return Principal(scopes=ANONYMOUS_SCOPES, client=client)
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "invalid_api_key",
                "the Authorization header must be `Bearer <key>`",
                {"WWW-Authenticate": "Bearer"},
            )
        if not self.required and not token.startswith(TOKEN_PREFIX):
            # Dev mode on loopback: OpenAI clients must send some key (e.g. "sk-anything"); one that is not a
            # Smolit key is not a credential, so the caller is anonymous. A Smolit key is always checked.
            return Principal(scopes=ANONYMOUS_SCOPES, client=client)
        cached, key = self._cached(token)
        if not cached:  # only a database round trip is worth a worker thread
            self._refuse_guessing(client)
            key = await run_in_threadpool(self._lookup, token)
            if key is None:
                self._count_failure(client)
        if key is None:
            raise ApiError(
                401,
                "invalid_api_key",
                "the API key is unknown or revoked",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        agents = frozenset(key.agents) if key.agents is not None else None
        return Principal(scopes=frozenset(key.scopes), agents=agents, key_id=key.key_id, name=key.name, client=client)

    def _refuse_guessing(self, client: str | None) -> None:
        """Unknown keys draw from the client address's bucket too: past it, 429 before any database lookup."""
        until = self._failing.get(client or "")
        if until is not None and (wait := until - time.monotonic()) > 0:
            raise ApiError(
                429, "rate_limited", "too many unknown API keys from this address", {"Retry-After": retry_after(wait)}
            )

    def _count_failure(self, client: str | None) -> None:
        wait = self.limiter.acquire(f"authfail:{client}")
        if wait > 0:
            if len(self._failing) > 10_000:
                self._failing.clear()
            self._failing[client or ""] = time.monotonic() + wait

    def limit(self, principal: Principal) -> None:
        wait = self.limiter.acquire(principal.identity)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {self.limiter.per_s:g}/s (burst {self.limiter.burst}) exceeded; retry in {wait:.2f}s",
                {"Retry-After": retry_after(wait)},
            )


def _authenticator(request: Request) -> Authenticator:
    auth = getattr(request.app.state, "auth", None)
    if auth is None:  # an app built without one: loopback dev behaviour, no limits
        auth = Authenticator(keys=None, required=False)
        request.app.state.auth = auth
    return auth


def require_scope(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """FastAPI dependency: the caller must hold `scope` (401 without a valid key, 403 without the scope, 429 over
    its rate). Returns the `Principal`."""

    async def dependency(request: Request) -> Principal:
        auth = _authenticator(request)
        principal = await auth.authenticate(request)
        if scope not in principal.scopes:
            raise ApiError(403, "insufficient_scope", f"this API key lacks the {scope!r} scope")
        auth.limit(principal)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_scope_{scope}"
    return dependency


def check_agent(principal: Principal, agent: str, cards: Mapping[str, AgentCard]) -> None:
    """403 unless the caller may ask `agent` (call after checking that the agent exists)."""
    card = cards.get(agent)
    if card is not None and not principal.may_reach(card):
        raise ApiError(403, "agent_not_allowed", f"this API key may not reach agent {agent!r}")


def routable_agents(principal: Principal, cards: Mapping[str, AgentCard]) -> tuple[str, ...] | None:
    """`RequestReceived.allowed_agents` for a routed request; 403 when the caller may reach no agent at all."""
    allowed = principal.allowed_agents(cards)
    if allowed == ():
        raise ApiError(403, "agent_not_allowed", "this API key may not reach any agent")
    return allowed


ChatCaller = Annotated[Principal, Depends(require_scope("chat"))]
"""Route parameter type: `principal: ChatCaller` requires the `chat` scope and returns the caller."""
FeedbackCaller = Annotated[Principal, Depends(require_scope("feedback"))]
AdminCaller = Annotated[Principal, Depends(require_scope("admin"))]

admin_router = APIRouter(prefix="/v1/admin", tags=["admin"])


@admin_router.get("/keys")
async def list_keys(request: Request, _p: AdminCaller) -> JSONResponse:
    """API keys (never their secrets): id, name, scopes, agents, created, revoked."""
    keys = _authenticator(request).keys
    found = await run_in_threadpool(keys.list) if keys is not None else []
    return JSONResponse(
        {
            "keys": [
                {
                    "key_id": k.key_id,
                    "name": k.name,
                    "scopes": list(k.scopes),
                    "agents": list(k.agents) if k.agents is not None else None,
                    "created_at": k.created_at.isoformat() if k.created_at else None,
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for k in found
            ]
        }
    )


__all__ = [
    "AdminCaller",
    "ApiError",
    "Authenticator",
    "ChatCaller",
    "FeedbackCaller",
    "Principal",
    "admin_router",
    "check_agent",
    "install_error_handler",
    "require_scope",
    "routable_agents",
]
