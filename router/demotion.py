"""Flagged agents are demoted, retired agents are never routed to: the router's view of the agent-lifecycle topic.

Policy (pure, `demote`): a flagged agent's score is multiplied by `factor` before the decision (default 0.5,
setting SMOLIT_FLAG_DEMOTION; a negative similarity is left as it is, it loses anyway). It still answers when it
stays the best after demotion (it is then far ahead of everyone else), when a request names it, or when it is the
only candidate; `factor` 0 excludes it from automatic routing. A retired agent is removed from every score map
(decision, exploration, follow-ups, consults); a request that names it fails with a clear `TaskFailed`.

`AgentStates` is the consumer-loop handler that keeps the flagged and retired sets current; it publishes nothing.
Each router instance reads the whole topic under its own group (like router-models), so each knows every flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from smolit.contracts import AgentRetired, Event, Lifecycle
from smolit.infra.kafka import Outgoing

log = structlog.get_logger("smolit.router.demotion")


def demote(scores: Mapping[str, float], flagged: frozenset[str], factor: float) -> dict[str, float]:
    """Scores with every flagged agent's positive score multiplied by `factor` (the others unchanged)."""
    return {a: (min(s, s * factor) if a in flagged else s) for a, s in scores.items()}


def without(scores: Mapping[str, float], retired: frozenset[str]) -> dict[str, float]:
    """Scores of the agents that are not retired."""
    return {a: s for a, s in scores.items() if a not in retired}


class AgentStates:
    """Flagged and retired agents from the lifecycle log; read by the routing thread, updated by the loop's."""

    def __init__(self, fallback: str, factor: float = 0.5) -> None:
        if not 0 <= factor <= 1:
            raise ValueError("the demotion factor is between 0 and 1 (setting SMOLIT_FLAG_DEMOTION)")
        self.factor = factor
        self._fallback = fallback
        self._state = Lifecycle()
        # Frozen snapshots swapped in one assignment each: a routing batch never sees a half-applied update.
        self.flagged: frozenset[str] = frozenset()
        self.retired: frozenset[str] = frozenset()

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        for event in events:
            if isinstance(event, AgentRetired) and event.agent == self._fallback:
                log.error("ignoring the retirement of the fallback agent", agent=event.agent, reason=event.reason)
                continue
            self._state.apply(event)
        flagged, retired = frozenset(self._state.flags), frozenset(self._state.retired)
        if (flagged, retired) != (self.flagged, self.retired):
            log.info("agent states changed", flagged=sorted(flagged), retired=sorted(retired))
        self.flagged, self.retired = flagged, retired
        return []

    def rank(self, scores: Mapping[str, float]) -> dict[str, float]:
        """The scores a decision is made on: retired agents removed, flagged ones demoted."""
        return demote(without(scores, self.retired), self.flagged, self.factor)
