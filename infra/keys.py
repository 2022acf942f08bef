"""API keys: create, list, revoke and look up bearer tokens stored as SHA-256 hashes in Postgres.

A token is `smk_<key_id>_<secret>` with a 256-bit random secret (`secrets.token_urlsafe(32)`). Only
`sha256(token)` is stored. A slow password hash (bcrypt, argon2) protects low-entropy secrets that people choose;
these tokens are machine-made with 256 bits of entropy, so inverting SHA-256 is as hard as guessing the token, and
a fast hash keeps the per-request lookup at one indexed query instead of ~100 ms of deliberate hashing.
The key id is public (shown by `smolit keys list`); it names a key in logs and events without revealing it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import ConnectionPool

TOKEN_PREFIX = "smk_"
KNOWN_SCOPES = ("chat", "feedback", "admin")
"""Scopes the gateway checks; any other well-formed scope may name a sensitive agent's `required_scope`."""
_SCOPE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class KeyRequestError(ValueError):
    """A key request that cannot be honoured (bad scope, unknown key)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    agents: tuple[str, ...] | None
    """Agents the key may reach; `None`: all."""
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not scopes:
        raise KeyRequestError("a key needs at least one scope (e.g. chat,feedback)")
    if bad := [s for s in scopes if not _SCOPE.match(s)]:
        raise KeyRequestError(f"invalid scope names: {bad} (lower case letters, digits, '-', '_')")
    return scopes


class KeyStore:
    """The `api_keys` table."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def create(self, name: str, scopes: tuple[str, ...], agents: tuple[str, ...] | None = None) -> tuple[ApiKey, str]:
        """A new key and its token; the token is returned once and never stored."""
        if not name.strip():
            raise KeyRequestError("a key needs a name")
        key_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        with self._pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO api_keys (key_id, name, token_hash, scopes, agents) VALUES (%s, %s, %s, %s, %s)"
                " RETURNING created_at",
                (key_id, name.strip(), hash_token(token), list(scopes), list(agents) if agents else None),
            ).fetchone()
        assert row is not None
        return ApiKey(key_id, name.strip(), scopes, agents or None, row[0]), token

    def lookup(self, token: str) -> ApiKey | None:
        """The active key with this token, or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT key_id, name, scopes, agents, created_at, revoked_at FROM api_keys"
                " WHERE token_hash = %s AND revoked_at IS NULL",
                (hash_token(token),),
            ).fetchone()
        return _key(row) if row else None

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT key_id, name, scopes, agents, created_at, revoked_at FROM api_keys"
                + where
                + " ORDER BY created_at, key_id"
            ).fetchall()
        return [_key(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke by key id; False when no active key has that id."""
        with self._pool.connection() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
            )
            return cur.rowcount == 1


def _key(row: tuple) -> ApiKey:  # type: ignore[type-arg]
    key_id, name, scopes, agents, created, revoked = row
    return ApiKey(key_id, name, tuple(scopes), tuple(agents) if agents else None, created, revoked)
