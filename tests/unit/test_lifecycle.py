"""The agent-lifecycle fold: flags, unflags, retirements and card versions, as every reader of the topic sees them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from smolit.contracts import (
    AgentCard,
    AgentCreated,
    AgentFlagged,
    AgentRetired,
    AgentUnflagged,
    AgentUpdated,
    Lifecycle,
    decode,
    encode,
)

T0 = datetime(2026, 11, 27, tzinfo=UTC)


def _at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_flag_holds_across_a_new_card_version_until_unflagged() -> None:
    """An AgentUpdated (the learner's challenger) keeps the flag; AgentUnflagged clears it."""
    card = AgentCard(name="legal", description="Law.")
    events = [
        AgentFlagged(correlation_id=uuid4(), agent="legal", reason="bad", occurred_at=_at(1)),
        AgentUpdated(correlation_id=uuid4(), card=card.model_copy(update={"version": 2}), occurred_at=_at(2)),
    ]
    state = Lifecycle.of(events)
    assert set(state.flags) == {"legal"} and state.cards["legal"].version == 2
    events.append(AgentUnflagged(correlation_id=uuid4(), agent="legal", reason="operator", occurred_at=_at(3)))
    assert Lifecycle.of(reversed(events)).flags == {}


def test_retired_agents_cannot_be_flagged_until_created_again() -> None:
    """A flag after a retirement is ignored; re-creating the agent clears the retirement."""
    events = [
        AgentRetired(correlation_id=uuid4(), agent="legal", reason="operator", occurred_at=_at(1)),
        AgentFlagged(correlation_id=uuid4(), agent="legal", reason="bad", occurred_at=_at(2)),
    ]
    state = Lifecycle.of(events)
    assert set(state.retired) == {"legal"} and state.flags == {}
    state.apply(AgentCreated(correlation_id=uuid4(), card=AgentCard(name="legal", description="Law.")))
    assert state.retired == {} and "legal" in state.cards


def test_old_flag_payloads_still_decode() -> None:
    """An AgentFlagged written before `rule`, `card_version` and `proposed_actions` existed decodes with defaults."""
    new = AgentFlagged(correlation_id=uuid4(), agent="a", reason="r", evidence={"n": 3.0})
    payload = json.loads(encode(new)[0])
    for key in ("rule", "card_version", "proposed_actions"):
        del payload[key]
    old = decode(json.dumps(payload).encode())
    assert isinstance(old, AgentFlagged) and old.rule == "" and old.proposed_actions == ()
