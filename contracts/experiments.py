"""A/B tests on the router-models log: which test is running, and which arm a conversation is in.

One fold and one assignment function shared by the router (which serves the arms) and the CLI (which reports them),
so both agree on who is in which arm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from .events import Event, ExperimentStarted, ExperimentStopped

CONTROL = "control"
TREATMENT = "treatment"


def arm(conversation_id: str, experiment_id: str, share: float) -> str:
    """`treatment` for a stable `share` of conversations, else `control`.

    sha256 of experiment and conversation id: the same conversation stays in its arm for the whole test (and on
    every router instance), and a new test reshuffles conversations independently of the previous one.
    """
    digest = hashlib.sha256(f"{experiment_id}:{conversation_id}".encode()).digest()
    return TREATMENT if int.from_bytes(digest[:8], "big") / 2**64 < share else CONTROL


@dataclass
class Experiments:
    """Started and stopped tests by id, folded in log order."""

    started: dict[str, ExperimentStarted] = field(default_factory=dict)
    stopped: dict[str, ExperimentStopped] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[Event]) -> Experiments:
        state = cls()
        state.apply(events)
        return state

    def apply(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, ExperimentStarted):
                self.started[event.experiment_id] = event
            elif isinstance(event, ExperimentStopped):
                self.stopped[event.experiment_id] = event

    @property
    def running(self) -> ExperimentStarted | None:
        """The running test, router or agent (one at a time: `smolit ab start` refuses a second)."""
        live = [e for i, e in self.started.items() if i not in self.stopped]
        return live[-1] if live else None

    def running_of(self, kind: str) -> ExperimentStarted | None:
        """The running test when it is of this kind (`router` or `agent`), else None."""
        running = self.running
        return running if running is not None and running.kind == kind else None


def challenger_trial(agent: str, version: int) -> str:
    """Experiment id of a learner challenger's trial: the split is stable for that (agent, card version)."""
    return f"challenger-{agent}-v{version}"
