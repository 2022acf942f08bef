"""Agents created at runtime: the agents service answers for them and hands them their knowledge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psycopg
import structlog

from smolit.contracts import AgentCard, AgentCreated, AgentUpdated
from smolit.infra.catalog import OnChange
from smolit.infra.kafka import RetryableError
from smolit.infra.knowledge import KnowledgeStore

from .runtime import AgentRuntime

log = structlog.get_logger("smolit.agents.catalog")


def catalog_listener(runtime: AgentRuntime, store: KnowledgeStore) -> OnChange:
    """`CardCatalog` callback: a created agent first takes over its knowledge-pool documents, then answers."""

    def apply(cards: Mapping[str, AgentCard], changed: Sequence[AgentCreated | AgentUpdated]) -> None:
        for event in changed:
            if isinstance(event, AgentCreated) and event.knowledge:
                try:
                    moved = store.claim(event.knowledge, event.card.knowledge_collection)
                except psycopg.OperationalError as exc:
                    raise RetryableError(f"knowledge claim for {event.card.name}: {exc}") from exc
                log.info("knowledge taken from the pool", agent=event.card.name, documents=moved)
        runtime.use_cards(cards)

    return apply
