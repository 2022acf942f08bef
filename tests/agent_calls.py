"""One agent answering directly, without the router or the broker: its card, its knowledge in PostgreSQL, the
extractive LLM. For tests that check what ingestion put into an agent's knowledge base."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.agents import AgentMetrics, AgentRuntime
from smolit.contracts import AgentCard, AnswerProduced, TaskAssigned, Topic, pack_vector
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.llm import ExtractiveLLM


def extractive_agent(card: AgentCard, pool: ConnectionPool) -> AgentRuntime:
    return AgentRuntime(
        {card.name: card},
        KnowledgeStore(pool),
        {"extractive": ExtractiveLLM()},
        default_backend="extractive",
        default_top_k=3,
        metrics=AgentMetrics.create(CollectorRegistry()),
    )


def ask(runtime: AgentRuntime, agent: str, question: str, embedder: Any) -> AnswerProduced:
    """The agent's answer to `question`, assigned to it as the router would (with the question's embedding)."""
    task = TaskAssigned(
        correlation_id=uuid.uuid4(),
        agent=agent,
        text=question,
        conversation_id="c",
        embedding=pack_vector(embedder.embed([question])[0].tolist()),
    )
    [answer] = [o.event for o in runtime.handle([task]) if o.topic == Topic.ANSWERS]
    assert isinstance(answer, AnswerProduced)
    return answer
