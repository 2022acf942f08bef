"""Facts: what one input event contributes to the per-agent windows, derived from that event alone (pure)."""

from __future__ import annotations

from smolit.contracts import AnswerProduced, Event, RoutingDecided, SubqueryRequested, TaskFailed

from .aggregate import UNKNOWN_AGENT, Fact

Position = tuple[str, int, int]
"""Source topic, partition, offset: the replay-detection key of a direct fact."""


def direct_facts(event: Event, position: Position) -> list[Fact]:
    """Facts that need no join. A replayed event yields the same facts at the same position."""
    t = event.occurred_at.timestamp()
    source = list(position)
    if isinstance(event, RoutingDecided):
        return [{"a": event.agent, "t": t, "s": source, "req": 1, "score": event.score}]
    if isinstance(event, AnswerProduced):
        fact = {"a": event.agent, "t": t, "s": source, "ans": 1, "lat": event.latency_ms}
        fact |= {"tok": event.prompt_tokens + event.completion_tokens, "cost": event.cost_usd}
        if event.cache_hit:
            fact["hit"] = 1
        return [fact]
    if isinstance(event, TaskFailed):
        return [{"a": event.agent, "t": t, "s": source, "fail": 1}]
    if isinstance(event, SubqueryRequested):
        if event.from_agent == event.agent:
            return [{"a": event.agent, "t": t, "s": source, "sqs": 1, "sqr": 1}]
        return [
            {"a": event.from_agent, "t": t, "s": source, "sqs": 1},
            {"a": event.agent, "t": t, "s": source, "sqr": 1},
        ]
    return []


def relabel(fact: Fact, known: frozenset[str]) -> Fact:
    """Facts about agents outside the catalogue are counted under `unknown` (an empty catalogue knows all)."""
    if known and fact["a"] not in known:
        return {**fact, "a": UNKNOWN_AGENT}
    return fact
