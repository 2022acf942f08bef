"""The live agent catalogue: the card files plus the agents created or updated at runtime.

`AgentCreated` / `AgentUpdated` events on the agent-lifecycle topic carry a whole card; the newest card per name
wins. Each service reads the topic from its start when it starts (the log is where created agents persist, like
every other fact: Postgres only holds projections), then follows it. Retirement and flags are another handler's
business; this one ignores every other event type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import structlog

from smolit.contracts import AgentCard, AgentCreated, AgentUpdated, Event

from .kafka import Outgoing

log = structlog.get_logger("smolit.catalog")

OnChange = Callable[[Mapping[str, AgentCard], Sequence[AgentCreated | AgentUpdated]], None]
"""Called with the new catalogue and the events that changed it, before the change becomes visible."""


class CardCatalog(Mapping[str, AgentCard]):
    """Read-only mapping of agent name to card, and the consumer-loop handler that keeps it current.

    Copy-on-write: a change swaps in a new dict, so readers in other threads (the gateway's request handlers,
    the router's batch) iterate a snapshot that never changes under them.
    """

    def __init__(self, cards: Mapping[str, AgentCard], on_change: OnChange | None = None) -> None:
        self._cards: dict[str, AgentCard] = dict(cards)
        self._on_change = on_change

    def __getitem__(self, name: str) -> AgentCard:
        return self._cards[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cards)

    def __len__(self) -> int:
        return len(self._cards)

    def snapshot(self) -> dict[str, AgentCard]:
        return dict(self._cards)

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        cards = dict(self._cards)
        changed: list[AgentCreated | AgentUpdated] = []
        for event in events:
            if isinstance(event, AgentCreated | AgentUpdated) and cards.get(event.card.name) != event.card:
                cards[event.card.name] = event.card
                changed.append(event)
        if changed:
            if self._on_change is not None:
                self._on_change(cards, changed)  # raises: nothing changed, the loop retries the batch
            self._cards = cards
            log.info("agent catalogue changed", agents=sorted({e.card.name for e in changed}), total=len(cards))
        return []
