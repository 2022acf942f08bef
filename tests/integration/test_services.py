"""Router and agent runtime handlers against the real embedder, database and LLM port."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.agents import AgentMetrics, AgentRuntime, Ingestor, RawDocument
from smolit.contracts import (
    AgentCard,
    AnswerProduced,
    Attachment,
    RequestReceived,
    RoutingDecided,
    TaskAssigned,
    TaskFailed,
    Topic,
    pack_vector,
)
from smolit.infra.cards import load_cards
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.llm import ExtractiveLLM
from smolit.router import Router, RouterMetrics

pytestmark = pytest.mark.integration

PASSAGE = (
    "Have the cheque reissued to the proper payee. A bank will not deposit a cheque made out to another person "
    "into your business account unless it is endorsed over to the business."
)


@pytest.fixture(scope="module")
def router(embedder) -> Router:
    return Router(
        load_cards(), embedder, fallback="general", threshold=0.25, metrics=RouterMetrics.create(CollectorRegistry())
    )


def _request(text: str, agent: str | None = None) -> RequestReceived:
    return RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text=text, agent=agent)


def test_router_emits_a_decision_and_a_task_per_request(router: Router) -> None:
    """Each request yields a RoutingDecided with every agent's score and a TaskAssigned keyed by the agent."""
    requests = [
        _request("What does the limitation of liability clause in these terms mean?"),
        _request("Should I put my savings into an index fund or pay off my mortgage?"),
    ]
    outputs = router.handle(requests)
    decisions = [o.event for o in outputs if o.topic is Topic.DECISIONS]
    tasks = [o for o in outputs if o.topic is Topic.TASKS]
    assert [d.agent for d in decisions] == ["legal", "finance"]  # type: ignore[attr-defined]
    assert all(
        isinstance(d, RoutingDecided) and set(d.scores) == {"finance", "legal", "health", "general"} for d in decisions
    )
    assert [t.key for t in tasks] == ["legal", "finance"]
    assert tasks[0].event.causation_id == decisions[0].event_id
    assert tasks[0].event.embedding == decisions[0].embedding  # type: ignore[attr-defined]


def test_router_honours_a_requested_agent(router: Router) -> None:
    """A request naming an agent goes to that agent whatever the scores say."""
    outputs = router.handle([_request("How are dividends taxed?", agent="legal")])
    assert outputs[0].event.agent == "legal"  # type: ignore[attr-defined]


def test_router_passes_a_requests_attachments_and_model_hints_on_to_the_task(router: Router) -> None:
    """Attachments and model hints of a request travel unchanged in its TaskAssigned; the decision records the
    hint too."""
    scan = Attachment(name="scan.png", media_type="image/png", data="iVBORw0KGgo=")
    hints = {"ocr": "smolit-ocr-upscale"}
    request = _request("What is the total on this invoice?").model_copy(
        update={"attachments": (scan,), "model_hints": hints}
    )
    out = router.handle([request])
    [task] = [o.event for o in out if o.topic is Topic.TASKS]
    [decided] = [o.event for o in out if o.topic is Topic.DECISIONS]
    assert isinstance(task, TaskAssigned) and task.attachments == (scan,) and task.model_hints == hints
    assert decided.model_hints == hints  # type: ignore[attr-defined]


def _runtime(pool: ConnectionPool, cards: dict[str, AgentCard]) -> AgentRuntime:
    return AgentRuntime(
        cards,
        KnowledgeStore(pool),
        {"extractive": ExtractiveLLM()},
        default_backend="extractive",
        default_top_k=3,
        metrics=AgentMetrics.create(CollectorRegistry()),
    )


def _task(embedder, agent: str, text: str) -> TaskAssigned:
    vector = embedder.embed([text])[0]
    return TaskAssigned(
        correlation_id=uuid.uuid4(), agent=agent, text=text, conversation_id="c", embedding=pack_vector(vector.tolist())
    )


def test_agent_answers_from_its_own_collection(pool: ConnectionPool, embedder) -> None:
    """The agent retrieves from its collection and answers with citations and sources."""
    name = f"a{uuid.uuid4().hex[:8]}"
    Ingestor(KnowledgeStore(pool), embedder).ingest(name, RawDocument("fiqa#1", PASSAGE, "Cheques"))
    card = AgentCard(name=name, description="banking")
    [out] = _runtime(pool, {name: card}).handle([_task(embedder, name, "How do I deposit a cheque for my business?")])
    answer = out.event
    assert out.topic is Topic.ANSWERS and isinstance(answer, AnswerProduced)
    assert answer.answer.endswith("[1]") and "deposit a cheque" in answer.answer
    assert [s.source for s in answer.sources] == ["fiqa#1"]
    assert answer.backend == "extractive"


def test_unknown_agent_gives_task_failed(pool: ConnectionPool, embedder) -> None:
    """A task for an agent with no card fails with a clear reason instead of vanishing."""
    [out] = _runtime(pool, {}).handle([_task(embedder, "ghost", "anything")])
    assert isinstance(out.event, TaskFailed)
    assert "unknown agent 'ghost'" in out.event.reason


def test_unconfigured_backend_gives_task_failed(pool: ConnectionPool, embedder) -> None:
    """An agent asking for an LLM backend that is not configured fails clearly."""
    card = AgentCard.model_validate({"name": "needs-openai", "description": "x", "llm": {"backend": "openai"}})
    [out] = _runtime(pool, {card.name: card}).handle([_task(embedder, card.name, "hello")])
    assert isinstance(out.event, TaskFailed) and "not configured" in out.event.reason
