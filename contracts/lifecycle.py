"""What the agent-lifecycle log says about each agent now: its latest card, whether it is flagged or retired.

One fold shared by every reader of the topic (router demotion, learner, CLI, gauges), so they agree on the rules:
a flag holds until `AgentUnflagged`, `AgentRetired` or a re-creation; an `AgentUpdated` (a new card version, e.g. the
learner's challenger) keeps the flag, because the new version has not shown better outcomes yet. `cards` holds the
newest card per agent (a challenger included: it is the version being judged); `challengers` the updates that only
share an agent's traffic (`AgentUpdated.share`) until a card replaces them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .agents import AgentCard
from .events import AgentCreated, AgentFlagged, AgentRetired, AgentUnflagged, AgentUpdated, Event


def agent_of(event: AgentCreated | AgentUpdated | AgentFlagged | AgentUnflagged | AgentRetired) -> str:
    """The agent a lifecycle event is about (its Kafka key)."""
    return event.card.name if isinstance(event, AgentCreated | AgentUpdated) else event.agent


@dataclass
class Lifecycle:
    """Latest card, flag and retirement per agent; `apply` events in log order."""

    cards: dict[str, AgentCard] = field(default_factory=dict)
    flags: dict[str, AgentFlagged] = field(default_factory=dict)
    retired: dict[str, AgentRetired] = field(default_factory=dict)
    challengers: dict[str, AgentUpdated] = field(default_factory=dict)
    champions: dict[str, AgentCard] = field(default_factory=dict)
    """The card answering the agent's conversations outside any trial (created or replacing cards only)."""

    @classmethod
    def of(cls, events: Iterable[Event]) -> Lifecycle:
        """The fold over events read back from the topic (ordered by time: partitions interleave)."""
        state = cls()
        for event in sorted(events, key=lambda e: e.occurred_at):
            state.apply(event)
        return state

    def apply(self, event: Event) -> bool:
        """Fold one event in; True when it is a lifecycle event (others are ignored)."""
        if isinstance(event, AgentCreated):
            name = event.card.name
            self.cards[name] = event.card
            self.champions[name] = event.card
            self.retired.pop(name, None)  # re-created: a fresh agent
            self.flags.pop(name, None)
            self.challengers.pop(name, None)
        elif isinstance(event, AgentUpdated):
            self.cards[event.card.name] = event.card
            if event.share is not None:
                self.challengers[event.card.name] = event
            else:  # a replacing card (promotion, rollback, edit) ends the challenger's trial
                self.challengers.pop(event.card.name, None)
                self.champions[event.card.name] = event.card
        elif isinstance(event, AgentFlagged):
            if event.agent not in self.retired:
                self.flags[event.agent] = event
        elif isinstance(event, AgentUnflagged):
            self.flags.pop(event.agent, None)
        elif isinstance(event, AgentRetired):
            self.retired[event.agent] = event
            self.flags.pop(event.agent, None)
            self.challengers.pop(event.agent, None)
        else:
            return False
        return True
