"""Routing demotion: flagged agents' scores shrink, retired agents disappear, requests naming them fail clearly."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from smolit.contracts import (
    AgentCard,
    AgentFlagged,
    AgentRetired,
    AgentUnflagged,
    RequestReceived,
    RoutingDecided,
    TaskAssigned,
    TaskFailed,
    Topic,
)
from smolit.router import AgentStates, Router, RouterMetrics, decide, demote

AGENTS = ("legal", "finance", "general")


def test_demote_shrinks_only_flagged_positive_scores() -> None:
    """A flagged agent's positive score is multiplied by the factor; negative scores and other agents stay."""
    scores = {"legal": 0.6, "finance": -0.2, "general": 0.1}
    assert demote(scores, frozenset({"legal", "finance"}), 0.5) == {"legal": 0.3, "finance": -0.2, "general": 0.1}
    assert demote(scores, frozenset(), 0.5) == scores


def test_demotion_moves_ambiguous_requests_but_not_clear_ones_or_named_ones() -> None:
    """At 0.5 a borderline flagged agent loses to the fallback, a far-ahead one still wins; naming it always works;
    as the only candidate it still answers."""
    flagged = frozenset({"legal"})
    ambiguous = demote({"legal": 0.36, "finance": 0.23, "general": 0.05}, flagged, 0.5)
    assert decide(ambiguous, fallback="general", threshold=0.25).agent == "general"
    clear = demote({"legal": 0.96, "finance": 0.09, "general": 0.09}, flagged, 0.5)
    assert decide(clear, fallback="general", threshold=0.25).agent == "legal"
    excluded = demote({"legal": 0.96, "finance": 0.09, "general": 0.09}, flagged, 0.0)
    assert decide(excluded, fallback="general", threshold=0.25).agent == "general"
    assert decide(excluded, fallback="general", threshold=0.25, requested="legal").agent == "legal"
    assert decide(demote({"legal": 0.9}, flagged, 0.0), fallback="general", threshold=0.25).agent == "legal"


def test_agent_states_follow_the_lifecycle_but_never_retire_the_fallback() -> None:
    """Flags and retirements update the sets; an unflag clears; a retirement of the fallback is ignored."""
    states = AgentStates("general")
    states.handle([AgentFlagged(correlation_id=uuid.uuid4(), agent="legal", reason="bad")])
    states.handle([AgentRetired(correlation_id=uuid.uuid4(), agent="general", reason="operator")])
    assert (states.flagged, states.retired) == ({"legal"}, frozenset())
    states.handle([AgentUnflagged(correlation_id=uuid.uuid4(), agent="legal", reason="operator")])
    states.handle([AgentRetired(correlation_id=uuid.uuid4(), agent="finance", reason="operator")])
    assert (states.flagged, states.retired) == (frozenset(), {"finance"})
    with pytest.raises(ValueError, match="between 0 and 1"):
        AgentStates("general", factor=1.5)


class OneHot:
    """Embeds each card (`card NAME`) and each request (`ask NAME`) as a basis vector of its agent."""

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), 8), dtype=np.float32)
        for i, text in enumerate(texts):
            rows[i, AGENTS.index(text.split()[-1])] = 1.0
        return rows


def _router(states: AgentStates) -> Router:
    cards = {a: AgentCard(name=a, description=f"card {a}") for a in AGENTS}
    metrics = RouterMetrics.create(CollectorRegistry())
    return Router(cards, OneHot(), fallback="general", threshold=0.25, metrics=metrics, states=states)


def _ask(router: Router, agent: str | None = None) -> list:
    request = RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text="ask legal", agent=agent)
    return router.handle([request])


def test_router_sends_a_flagged_agents_requests_elsewhere_and_records_the_demotion() -> None:
    """With factor 0 the fallback takes `legal`'s request; the decision lists the demoted agent and its score."""
    states = AgentStates("general", factor=0.0)
    router = _router(states)
    states.handle([AgentFlagged(correlation_id=uuid.uuid4(), agent="legal", reason="bad")])
    decided = next(o.event for o in _ask(router) if isinstance(o.event, RoutingDecided))
    assert (decided.agent, decided.demoted, decided.scores["legal"]) == ("general", ("legal",), 0.0)


def test_router_never_routes_to_a_retired_agent_and_refuses_requests_naming_it() -> None:
    """A retired agent is absent from every score map; a request naming it gets a TaskFailed saying so."""
    states = AgentStates("general")
    router = _router(states)
    states.handle([AgentRetired(correlation_id=uuid.uuid4(), agent="legal", reason="operator")])
    out = _ask(router)
    decided = next(o.event for o in out if isinstance(o.event, RoutingDecided))
    task = next(o.event for o in out if isinstance(o.event, TaskAssigned))
    assert decided.agent == "general" and "legal" not in decided.scores and "legal" not in task.scores
    refused = _ask(router, agent="legal")
    assert [(o.topic, type(o.event)) for o in refused] == [(Topic.ANSWERS, TaskFailed)]
    assert "retired" in refused[0].event.reason  # type: ignore[attr-defined]
