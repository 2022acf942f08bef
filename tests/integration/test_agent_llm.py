"""The agent runtime's LLM settings end to end: per-card prompts and parameters reach a real OpenAI-compatible
server, identical calls are cached, and an unreachable endpoint fails the task or falls back to `extractive`."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.agents import AgentMetrics, AgentRuntime, Ingestor, ParkingLot, RawDocument
from smolit.contracts import (
    AgentCard,
    AnswerProduced,
    SubqueryAnswered,
    SubqueryRequested,
    TaskAssigned,
    TaskFailed,
    pack_vector,
)
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.llm import LLM, CompletionCache, ExtractiveLLM, OpenAILLM

from .openai_server import running_server

pytestmark = pytest.mark.integration

PASSAGE = "Cheques are cleared within two business days. A cheque made out to another person must be endorsed."


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with running_server() as running:
        yield running


@pytest.fixture(scope="module")
def collection(pool: ConnectionPool, embedder) -> str:
    name = f"c{uuid.uuid4().hex[:8]}"
    Ingestor(KnowledgeStore(pool), embedder).ingest(name, RawDocument("bank#cheques", PASSAGE, "Cheques"))
    return name


def _card(name: str, collection: str, **llm: Any) -> AgentCard:
    return AgentCard.model_validate({"name": name, "description": name, "collection": collection, "llm": llm})


def _runtime(pool: ConnectionPool, cards: list[AgentCard], llms: dict[str, LLM], **kw: Any) -> AgentRuntime:
    return AgentRuntime(
        {c.name: c for c in cards},
        KnowledgeStore(pool),
        llms,
        default_backend="extractive",
        default_top_k=3,
        metrics=AgentMetrics.create(kw.pop("registry", CollectorRegistry())),
        llm_backoff_s=0.01,
        **kw,
    )


def _task(embedder, agent: str, text: str) -> TaskAssigned:
    vector = embedder.embed([text])[0].tolist()
    return TaskAssigned(
        correlation_id=uuid.uuid4(), agent=agent, text=text, conversation_id="c", embedding=pack_vector(vector)
    )


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here any more: connections are refused
    return f"http://127.0.0.1:{port}/v1"


def test_two_agents_send_their_own_prompt_and_parameters(pool, embedder, server, collection) -> None:
    """Each card's system prompt, model, temperature and max_tokens reach the endpoint, with the retrieved passage."""
    base_url, received = server
    banker = _card(
        "banker",
        collection,
        backend="openai",
        model="bank-model",
        temperature=0.1,
        max_tokens=60,
        system_prompt="You are a cautious banker.",
    )
    teller = _card(
        "teller",
        collection,
        backend="openai",
        temperature=0.8,
        max_tokens=90,
        system_prompt="You are a chatty bank teller.",
    )
    llms: dict[str, LLM] = {"openai": OpenAILLM(base_url, None, "default-model", 5.0, 0)}
    runtime = _runtime(pool, [banker, teller], llms)
    before = len(received)
    outs = runtime.handle(
        [_task(embedder, "banker", "When do cheques clear?"), _task(embedder, "teller", "When do cheques clear?")]
    )
    a, b = received[before:]
    assert (a["model"], a["temperature"], a["max_tokens"]) == ("bank-model", 0.1, 60)
    assert (b["model"], b["temperature"], b["max_tokens"]) == ("default-model", 0.8, 90)
    assert a["messages"][0]["content"] == "You are a cautious banker."
    assert b["messages"][0]["content"] == "You are a chatty bank teller."
    assert "(source: bank#cheques, title: Cheques)" in a["messages"][1]["content"]
    first, second = (o.event for o in outs)
    assert isinstance(first, AnswerProduced) and isinstance(second, AnswerProduced)
    assert "cautious banker" in first.answer and "chatty bank teller" in second.answer
    assert (first.backend, first.model, second.model) == ("openai", "bank-model", "default-model")
    assert first.prompt_tokens > 0 and first.completion_tokens > 0
    assert [s.source for s in first.sources] == ["bank#cheques"]


def test_identical_calls_are_served_from_the_cache(pool, embedder, server, collection) -> None:
    """The second identical call never reaches the endpoint, is flagged cache_hit and counted in the metrics."""
    base_url, received = server
    card = _card("cached", collection, backend="openai", system_prompt="You are a cached agent.")
    uncached = _card("uncached", collection, backend="openai", system_prompt="You are fresh.", cache=False)
    registry = CollectorRegistry()
    llms: dict[str, LLM] = {"openai": OpenAILLM(base_url, None, "default-model", 5.0, 0)}
    runtime = _runtime(pool, [card, uncached], llms, cache=CompletionCache(16), registry=registry)
    before = len(received)
    names = ("cached", "cached", "uncached", "uncached")
    outs = runtime.handle([_task(embedder, n, "When do cheques clear?") for n in names])
    hits = [o.event.cache_hit for o in outs]  # type: ignore[attr-defined]
    assert hits == [False, True, False, False]
    assert len(received) - before == 3
    assert outs[0].event.answer == outs[1].event.answer  # type: ignore[attr-defined]
    assert registry.get_sample_value("smolit_llm_cache_hits_total", {"agent": "cached"}) == 1.0
    other = runtime.handle([_task(embedder, "cached", "How do I endorse a cheque?")])
    assert other[0].event.cache_hit is False  # type: ignore[attr-defined]


def test_endpoint_down_fails_the_task_after_retries(pool, embedder, collection) -> None:
    """With no fallback, a refused connection is retried, then the task fails with a reason that names the backend."""
    card = _card("down", collection, backend="openai")
    llms: dict[str, LLM] = {"openai": OpenAILLM(_closed_port_url(), None, "m", 2.0, 0)}
    [out] = _runtime(pool, [card], llms, llm_attempts=2).handle([_task(embedder, "down", "When do cheques clear?")])
    failed = out.event
    assert isinstance(failed, TaskFailed) and failed.retryable
    assert "LLM openai unavailable after 2 attempts" in failed.reason and "APIConnectionError" in failed.reason


def test_endpoint_down_falls_back_to_extractive(pool, embedder, collection) -> None:
    """A card's fallback_backend answers from the same passages when its backend stays down; the metric counts it."""
    card = _card("resilient", collection, backend="openai", fallback_backend="extractive")
    registry = CollectorRegistry()
    llms: dict[str, LLM] = {"openai": OpenAILLM(_closed_port_url(), None, "m", 2.0, 0), "extractive": ExtractiveLLM()}
    runtime = _runtime(pool, [card], llms, llm_attempts=2, registry=registry)
    [out] = runtime.handle([_task(embedder, "resilient", "When do cheques clear?")])
    answer = out.event
    assert isinstance(answer, AnswerProduced) and answer.backend == "extractive"
    assert answer.answer == "Cheques are cleared within two business days. [1]"
    assert registry.get_sample_value("smolit_llm_fallbacks_total", {"agent": "resilient", "backend": "extractive"}) == 1


def test_the_llm_consults_another_agent_with_the_consult_agent_tool(pool, embedder, server, collection) -> None:
    """The model's consult_agent call becomes a subquery; the subanswer's passages come back numbered after the
    agent's own, and the model writes the final answer citing both agents' sources."""
    base_url, received = server
    legal_collection = f"c{uuid.uuid4().hex[:8]}"
    terms = "A card issuer must tell you in writing at least 45 days before it changes your card agreement."
    Ingestor(KnowledgeStore(pool), embedder).ingest(legal_collection, RawDocument("legal#terms", terms, "Terms"))
    asker = AgentCard.model_validate(
        {
            "name": "asker",
            "description": "banking",
            "collection": collection,
            "consults": ["lawyer"],
            "llm": {"backend": "openai", "model": "tool:lawyer", "system_prompt": "You are a banker."},
        }
    )
    lawyer = AgentCard(name="lawyer", description="contracts", collection=legal_collection)
    llms: dict[str, LLM] = {"openai": OpenAILLM(base_url, None, "m", 5.0, 0), "extractive": ExtractiveLLM()}
    runtime = _runtime(pool, [asker, lawyer], llms, parking=ParkingLot(pool), embedder=embedder)
    before = len(received)

    [ask] = runtime.handle([_task(embedder, "asker", "When do cheques clear?")])
    offered = received[before]["tools"][0]["function"]
    assert offered["name"] == "consult_agent" and offered["parameters"]["properties"]["agent"]["enum"] == ["lawyer"]
    sub = ask.event
    assert isinstance(sub, SubqueryRequested) and (sub.from_agent, sub.agent) == ("asker", "lawyer")
    assert sub.text == "Can the bank change my card terms?" and sub.embedding is not None

    [reply] = runtime.handle([sub])
    assert isinstance(reply.event, SubqueryAnswered) and [s.source for s in reply.event.sources] == ["legal#terms"]
    [final] = runtime.handle([reply.event])
    answer = final.event
    assert isinstance(answer, AnswerProduced) and answer.subqueries == 1
    assert [s.source for s in answer.sources] == ["bank#cheques", "legal#terms"]
    rewrite = received[-1]
    assert "tools" not in rewrite and "You are a banker." in answer.answer
    user = rewrite["messages"][1]["content"]
    assert "[2] (source: legal#terms, title: Terms)\nA card issuer must tell you in writing" in user
    assert answer.prompt_tokens > 10 and answer.completion_tokens > 5  # both calls are counted
