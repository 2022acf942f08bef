"""Proposals as the agent-lifecycle log tells them: pending or approved, and the approval of one."""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from smolit.contracts import AgentCard, AgentCreated, AgentProposed, Event

PRODUCER = "cli"


class ProposalError(ValueError):
    """A proposal cannot be approved (unknown id, already approved, name taken)."""


@dataclass(frozen=True)
class ProposalState:
    proposal: AgentProposed
    status: Literal["pending", "approved"]
    """`approved`: an `AgentCreated` names this proposal (approved by hand or created in auto mode)."""


def proposal_states(events: Iterable[Event]) -> list[ProposalState]:
    """Every proposal in the lifecycle log, oldest first, with its status."""
    proposals: dict[str, AgentProposed] = {}
    created: set[str] = set()
    for event in events:
        if isinstance(event, AgentProposed):
            proposals.setdefault(event.proposal_id, event)
        elif isinstance(event, AgentCreated) and event.proposal_id is not None:
            created.add(event.proposal_id)
    return [ProposalState(p, "approved" if pid in created else "pending") for pid, p in proposals.items()]


def approve(proposal_id: str, events: Iterable[Event], agents: Set[str], name: str | None = None) -> AgentCreated:
    """The `AgentCreated` that approves a pending proposal; ProposalError (and nothing to send) otherwise.

    `agents`: names of the agents that exist now (card files and agents created at runtime); `name`: create the
    agent under this name instead of the proposed one."""
    states = proposal_states(events)
    found = next((s for s in states if s.proposal.proposal_id == proposal_id), None)
    if found is None:
        pending = [s.proposal.proposal_id for s in states if s.status == "pending"]
        hint = f"pending: {', '.join(pending)}" if pending else "there are no pending proposals"
        raise ProposalError(f"no proposal {proposal_id!r} ({hint}; see `smolit agents proposals`)")
    proposal = found.proposal
    if found.status == "approved":
        raise ProposalError(f"proposal {proposal_id} was already approved")
    try:
        card = proposal.card if name is None else AgentCard.model_validate({**proposal.card.model_dump(), "name": name})
    except ValidationError as exc:
        raise ProposalError(f"invalid agent name {name!r}: {exc.errors()[0]['msg']}") from exc
    if card.name in agents:
        raise ProposalError(f"an agent named {card.name!r} already exists; give another with --name")
    return proposal.caused(
        AgentCreated,
        producer=PRODUCER,
        card=card,
        proposal_id=proposal.proposal_id,
        knowledge=proposal.knowledge,
    )
