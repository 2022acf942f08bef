"""Requests waiting for their answer: asyncio futures resolved from the answer consumer's thread."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID


@dataclass
class _Waiter:
    future: asyncio.Future[dict[str, Any]]
    loop: asyncio.AbstractEventLoop
    decision: dict[str, Any] | None = None
    answer: dict[str, Any] | None = None
    done: bool = field(default=False)


class PendingRequests:
    """Joins a request's routing decision and its answer; each request is answered once."""

    def __init__(self) -> None:
        self._waiters: dict[UUID, _Waiter] = {}
        self._lock = threading.Lock()

    def expect(self, request_id: UUID) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        with self._lock:
            self._waiters[request_id] = _Waiter(future, loop)
        return future

    def forget(self, request_id: UUID) -> None:
        with self._lock:
            self._waiters.pop(request_id, None)

    def fail(self, request_id: UUID, error: Exception) -> None:
        with self._lock:
            waiter = self._waiters.pop(request_id, None)
        if waiter is not None:
            waiter.loop.call_soon_threadsafe(_set_exception, waiter.future, error)

    def on_decision(self, request_id: UUID, decision: dict[str, Any]) -> None:
        self._update(request_id, decision=decision)

    def on_answer(self, request_id: UUID, answer: dict[str, Any]) -> None:
        self._update(request_id, answer=answer)

    def _update(self, request_id: UUID, **parts: dict[str, Any]) -> None:
        with self._lock:
            waiter = self._waiters.get(request_id)
            if waiter is None or waiter.done:
                return
            for name, value in parts.items():
                if getattr(waiter, name) is None:  # first copy wins: redelivered events change nothing
                    setattr(waiter, name, value)
            if waiter.decision is None or waiter.answer is None:
                return
            waiter.done = True
            del self._waiters[request_id]
            result = {"decision": waiter.decision, "answer": waiter.answer}
        waiter.loop.call_soon_threadsafe(_set_result, waiter.future, result)

    def __len__(self) -> int:
        return len(self._waiters)


def _set_result(future: asyncio.Future[dict[str, Any]], value: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[dict[str, Any]], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
