"""Joining a request's decision and answer for the waiting HTTP call."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from smolit.gateway import PendingRequests


def test_result_needs_both_decision_and_answer() -> None:
    """The waiter resolves only when the decision and the answer have both arrived, in either order."""

    async def scenario() -> dict:
        pending = PendingRequests()
        rid = uuid.uuid4()
        future = pending.expect(rid)
        pending.on_answer(rid, {"answer": "a"})
        await asyncio.sleep(0.01)
        assert not future.done()
        threading.Thread(target=pending.on_decision, args=(rid, {"agent": "finance"})).start()
        return await asyncio.wait_for(future, 2)

    assert asyncio.run(scenario()) == {"decision": {"agent": "finance"}, "answer": {"answer": "a"}}


def test_first_answer_wins() -> None:
    """A redelivered or second answer for the same request changes nothing."""

    async def scenario() -> dict:
        pending = PendingRequests()
        rid = uuid.uuid4()
        future = pending.expect(rid)
        pending.on_answer(rid, {"answer": "first"})
        pending.on_answer(rid, {"answer": "second"})
        pending.on_decision(rid, {"agent": "x"})
        pending.on_answer(rid, {"answer": "third"})
        result = await asyncio.wait_for(future, 2)
        assert len(pending) == 0
        return result

    assert asyncio.run(scenario())["answer"] == {"answer": "first"}


def test_unknown_requests_are_ignored() -> None:
    """Answers for requests this gateway is not waiting for are dropped without error."""
    pending = PendingRequests()
    pending.on_answer(uuid.uuid4(), {"answer": "x"})
    assert len(pending) == 0


def test_failure_reaches_the_waiter() -> None:
    """A broker rejection is raised in the waiting call."""

    async def scenario() -> None:
        pending = PendingRequests()
        rid = uuid.uuid4()
        future = pending.expect(rid)
        pending.fail(rid, RuntimeError("broker rejected"))
        await asyncio.wait_for(future, 2)

    with pytest.raises(RuntimeError, match="broker rejected"):
        asyncio.run(scenario())
