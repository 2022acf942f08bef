"""Follow-up routing with the real embedder: the measurement behind README "Conversations"."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry

from smolit.contracts import RequestReceived, RoutingDecided, TaskAssigned, Topic
from smolit.infra.cards import load_cards
from smolit.router import Router, RouterMetrics

pytestmark = pytest.mark.integration

# (first turn, its agent, follow-up, right agent for the follow-up); the last three change the topic.
CONVERSATIONS = [
    (
        "How should I pay myself from my limited company to minimise tax?",
        "finance",
        "And what about for a sole trader?",
        "finance",
    ),
    ("Can my landlord keep my deposit for normal wear and tear?", "legal", "what if it was in the contract?", "legal"),
    ("What are the side effects of metformin?", "health", "is it safe during pregnancy?", "health"),
    ("Is an index fund better than a savings account?", "finance", "what about the fees?", "finance"),
    ("Can my employer read my private emails at work?", "legal", "and on my own phone?", "legal"),
    ("What is the maximum dose of ibuprofen per day?", "health", "and for children?", "health"),
    ("How are dividends taxed?", "finance", "What are the symptoms of type 2 diabetes?", "health"),
    ("Can my landlord keep my deposit?", "legal", "How much should I save for retirement each month?", "finance"),
    (
        "What are the side effects of metformin?",
        "health",
        "Is this non-compete clause in my contract enforceable?",
        "legal",
    ),
]


def _route(router: Router, request: RequestReceived) -> tuple[RoutingDecided, TaskAssigned]:
    outputs = router.handle([request])
    [decision] = [o.event for o in outputs if o.topic is Topic.DECISIONS]
    [task] = [o.event for o in outputs if o.topic is Topic.TASKS]
    assert isinstance(decision, RoutingDecided) and isinstance(task, TaskAssigned)
    return decision, task


def test_follow_ups_route_with_their_conversation(embedder) -> None:
    """All 9 follow-ups reach the right agent with the previous turn; the text alone gets 7 (README numbers)."""
    router = Router(
        load_cards(), embedder, fallback="general", threshold=0.25, metrics=RouterMetrics.create(CollectorRegistry())
    )
    with_context = alone = 0
    for first, previous, follow, want in CONVERSATIONS:
        request = RequestReceived(
            correlation_id=uuid.uuid4(), conversation_id="c", text=follow, context=(first,), previous_agent=previous
        )
        decision, task = _route(router, request)
        with_context += decision.agent == want
        bare, _ = _route(router, RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text=follow))
        alone += bare.agent == want
        if decision.context_used:  # the agent answers the follow-up together with the turn it follows
            assert task.context == (first,) and task.embedding != bare.embedding
    assert (with_context, alone) == (9, 7)


def test_small_talk_goes_to_the_fallback_unsearched(embedder) -> None:
    router = Router(
        load_cards(), embedder, fallback="general", threshold=0.25, metrics=RouterMetrics.create(CollectorRegistry())
    )
    decision, task = _route(router, RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text="thanks!"))
    assert (decision.agent, decision.small_talk, task.small_talk) == ("general", "thanks", "thanks")
    named, _ = _route(
        router, RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text="thanks!", agent="legal")
    )
    assert named.agent == "legal" and named.small_talk is None  # a named agent is always asked


def test_small_talk_in_the_context_is_skipped(embedder) -> None:
    """The web chat and OpenAI clients send every earlier user message; a "thanks!" in between is no topic."""
    router = Router(
        load_cards(), embedder, fallback="general", threshold=0.25, metrics=RouterMetrics.create(CollectorRegistry())
    )
    first, follow = CONVERSATIONS[0][0], CONVERSATIONS[0][2]
    request = RequestReceived(
        correlation_id=uuid.uuid4(), conversation_id="c", text=follow, context=(first, "thanks!"), previous_agent=None
    )
    decision, task = _route(router, request)
    assert decision.agent == "finance" and decision.context_used and task.context == (first,)
