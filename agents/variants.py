"""Which card answers a conversation: the agent's champion card, or a variant on trial for a share of its traffic.

Two kinds of trial, one split (`contracts.experiments.arm` on the conversation id, as the router's A/B tests):
- a learner challenger: an `AgentUpdated` with `share` makes its card answer that share of the agent's
  conversations (experiment id `challenger-<agent>-v<version>`); an `AgentUpdated` without `share` (promotion,
  rollback, edit), an `AgentCreated` or an `AgentRetired` ends it;
- an operator's agent A/B test (`smolit ab start --agent A --variant FILE`): `ExperimentStarted(kind="agent")` on the
  router-models topic; its variant answers the treatment arm until `ExperimentStopped`. While it runs it takes
  precedence over a learner challenger of the same agent (one split per conversation, one thing compared).

Subqueries carry no conversation id: the champion answers them. Every answer records the card version, the trial
and the arm (`AnswerProduced`), so outcomes can be compared per arm (`smolit ab status`) and per version (learner).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

from smolit.contracts import (
    CONTROL,
    TREATMENT,
    AgentCard,
    AgentCreated,
    AgentRetired,
    AgentUpdated,
    Event,
    Experiments,
    ExperimentStarted,
    ExperimentStopped,
    arm,
    challenger_trial,
)
from smolit.infra.kafka import Handler, Outgoing

log = structlog.get_logger("smolit.agents.variants")


@dataclass(frozen=True)
class Trial:
    """A variant card answering a hash-chosen share of one agent's conversations."""

    experiment_id: str
    card: AgentCard
    share: float


@dataclass(frozen=True)
class Choice:
    """The card that answers one work item, and the trial and arm it was chosen in (None: no trial)."""

    card: AgentCard
    experiment_id: str | None = None
    arm: str | None = None


class Trials:
    """Running trials per agent, folded from lifecycle and router-models events (pure, no I/O).

    Written by the lifecycle thread, read by the answering thread: each change swaps one dict reference.
    """

    def __init__(self) -> None:
        self._challengers: dict[str, Trial] = {}
        self._experiments = Experiments()
        self._active: dict[str, Trial] = {}

    @property
    def active(self) -> dict[str, Trial]:
        """The trial in force per agent (an operator's test before a learner challenger)."""
        return self._active

    def apply(self, events: Iterable[Event]) -> None:
        challengers = dict(self._challengers)
        for event in events:
            if isinstance(event, AgentUpdated):
                name = event.card.name
                if event.share is None:
                    challengers.pop(name, None)  # promoted, rolled back or edited: one card again
                else:
                    challengers[name] = Trial(challenger_trial(name, event.card.version), event.card, event.share)
            elif isinstance(event, AgentCreated):
                challengers.pop(event.card.name, None)
            elif isinstance(event, AgentRetired):
                challengers.pop(event.agent, None)
            elif isinstance(event, ExperimentStarted | ExperimentStopped):
                self._experiments.apply([event])
        self._challengers = challengers
        active = dict(challengers)
        test = self._experiments.running_of("agent")
        if test is not None and test.agent is not None and test.variant is not None:
            active[test.agent] = Trial(test.experiment_id, test.variant, test.share)
        if active != self._active:
            log.info("card trials", trials={a: (t.experiment_id, t.card.version, t.share) for a, t in active.items()})
        self._active = active

    def choose(self, card: AgentCard, conversation_id: str | None) -> Choice:
        """The champion `card`, or the trial's card when the conversation falls in the treatment arm."""
        trial = self._active.get(card.name)
        if trial is None or conversation_id is None:
            return Choice(card)
        if arm(conversation_id, trial.experiment_id, trial.share) == TREATMENT:
            return Choice(trial.card, trial.experiment_id, TREATMENT)
        return Choice(card, trial.experiment_id, CONTROL)


def follow_cards(catalog: Handler, trials: Trials) -> Handler:
    """One handler for the agents service's lifecycle + router-models loop: replacing cards go to the catalogue (the
    champions), challengers and agent tests to `trials`."""

    def handle(events: Sequence[Event]) -> list[Outgoing]:
        catalog([e for e in events if not (isinstance(e, AgentUpdated) and e.share is not None)])
        trials.apply(events)
        return []

    return handle
