"""The one wire mapping of events: JSON value, `type`/`schema_version` also in Kafka headers, upcast on read."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .events import EVENT_TYPES, AnyEvent, Event

HEADER_TYPE = "smolit-type"
HEADER_VERSION = "smolit-schema-version"
HEADER_EVENT_ID = "smolit-event-id"

Headers = Sequence[tuple[str, bytes | str | None]]
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)
#: (event type, version) -> function that turns a payload of that version into version + 1.
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class DecodeError(ValueError):
    """A message that can never be decoded (poison): bad JSON, unknown type, invalid schema."""


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register `fn(payload_v_n) -> payload_v_n+1` for an event type."""

    def decorate(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return decorate


def encode(event: Event) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Event -> (JSON bytes, Kafka headers)."""
    value = event.model_dump_json().encode("utf-8")
    headers = [
        (HEADER_TYPE, event.type.encode()),  # type: ignore[attr-defined]
        (HEADER_VERSION, str(event.schema_version).encode()),
        (HEADER_EVENT_ID, str(event.event_id).encode()),
    ]
    return value, headers


def upcast(payload: dict[str, Any]) -> dict[str, Any]:
    """Apply registered upcasters until the payload reaches its event's current schema version."""
    event_type = payload.get("type")
    cls = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if cls is None or not isinstance(event_type, str):
        raise DecodeError(f"unknown event type {event_type!r}")
    version = payload.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise DecodeError(f"invalid schema_version {version!r}")
    if version > cls.SCHEMA_VERSION:
        raise DecodeError(f"{event_type} schema_version {version} is newer than this build ({cls.SCHEMA_VERSION})")
    while version < cls.SCHEMA_VERSION:
        step = _UPCASTERS.get((event_type, version))
        if step is None:
            raise DecodeError(f"no upcaster for {event_type} v{version}")
        payload = {**step(payload), "schema_version": version + 1}
        version += 1
    return payload


def decode(value: bytes | None) -> Event:
    """JSON bytes -> the typed event, upcast to the current version. Raises DecodeError for poison."""
    if value is None:
        raise DecodeError("message has no value")
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"value is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise DecodeError("value is not a JSON object")
    try:
        return _ADAPTER.validate_python(upcast(payload))
    except ValidationError as exc:
        raise DecodeError(f"invalid {payload.get('type')} event: {_summary(exc)}") from exc


def _summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:5])
