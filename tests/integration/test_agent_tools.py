"""Declared agent tools in the real runtime: the extractive pattern trigger, OpenAI tool calls against a real
OpenAI-compatible server, allow-lists, argument validation, timeouts, and `ToolCalled` audit events."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.agents import AgentMetrics, AgentRuntime
from smolit.agents.tools import TOOLS, Tool, ToolRunner
from smolit.contracts import AgentCard, AnswerProduced, TaskAssigned, ToolCalled, Topic, pack_vector
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.llm import LLM, ExtractiveLLM, OpenAILLM

from .openai_server import running_server

pytestmark = pytest.mark.integration

QUESTION = "What is the monthly payment on a 200000 loan at 5% over 30 years?"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with running_server() as running:
        yield running


def _card(**fields: Any) -> AgentCard:
    return AgentCard.model_validate({"name": "banker", "description": "loans", "collection": "empty-tools"} | fields)


def _runtime(pool: ConnectionPool, card: AgentCard, llms: dict[str, LLM], tools: ToolRunner) -> AgentRuntime:
    return AgentRuntime(
        {card.name: card},
        KnowledgeStore(pool),
        llms,
        default_backend="extractive",
        default_top_k=3,
        metrics=AgentMetrics.create(CollectorRegistry()),
        llm_backoff_s=0.01,
        tools=tools,
    )


def _task(embedder, text: str) -> TaskAssigned:
    vector = embedder.embed([text])[0].tolist()
    return TaskAssigned(
        correlation_id=uuid.uuid4(), agent="banker", text=text, conversation_id="c", embedding=pack_vector(vector)
    )


def _split(outputs: list) -> tuple[list[ToolCalled], AnswerProduced]:
    audits = [o.event for o in outputs if o.topic == Topic.AUDIT]
    [answer] = [o.event for o in outputs if o.topic == Topic.ANSWERS]
    return audits, answer


def test_the_extractive_backend_runs_the_loan_calculator_on_its_pattern(pool, embedder) -> None:
    """The documented request pattern runs the allowed tool; its result opens the answer and is audited."""
    runtime = _runtime(pool, _card(tools=["loan_calculator"]), {"extractive": ExtractiveLLM()}, ToolRunner(pool))
    audits, answer = _split(runtime.handle([_task(embedder, QUESTION)]))
    assert "1,073.64 a month" in answer.answer
    [called] = audits
    assert (called.tool, called.outcome, called.trigger) == ("loan_calculator", "ok", "pattern")
    assert called.args == {"principal": 200000.0, "annual_rate_percent": 5.0, "years": 30.0}
    assert called.result["monthly_payment"] == 1073.64 and called.correlation_id == answer.correlation_id


def test_an_agent_without_the_tool_in_its_card_never_runs_it(pool, embedder) -> None:
    """No allow-list entry: the same question is answered without any tool call."""
    runtime = _runtime(pool, _card(), {"extractive": ExtractiveLLM()}, ToolRunner(pool))
    audits, answer = _split(runtime.handle([_task(embedder, QUESTION)]))
    assert audits == [] and "1,073.64" not in answer.answer


def test_the_openai_backend_calls_a_declared_tool_and_answers_with_its_result(pool, embedder, server) -> None:
    """The tool is offered with its JSON schema; the model's call runs and its result reaches the second call."""
    base_url, received = server
    args = json.dumps({"principal": 200000, "annual_rate_percent": 5, "years": 30})
    card = _card(tools=["loan_calculator"], llm={"backend": "openai", "model": f"calc:{args}"})
    llms: dict[str, LLM] = {"openai": OpenAILLM(base_url, None, "m", 5.0, 0), "extractive": ExtractiveLLM()}
    before = len(received)
    audits, answer = _split(_runtime(pool, card, llms, ToolRunner(pool)).handle([_task(embedder, QUESTION)]))
    offered = received[before]["tools"][0]["function"]
    assert offered["name"] == "loan_calculator" and offered["parameters"]["required"] == [
        "principal",
        "annual_rate_percent",
        "years",
    ]
    second = received[before + 1]
    assert "tools" not in second and "1,073.64 a month" in second["messages"][1]["content"]
    assert [(a.outcome, a.trigger) for a in audits] == [("ok", "llm")]
    assert answer.prompt_tokens > 10  # both calls counted


def test_invalid_arguments_from_the_model_are_refused_and_audited(pool, embedder, server) -> None:
    """Arguments outside the schema never reach the tool; the model is told, and the call is audited."""
    base_url, received = server
    card = _card(tools=["loan_calculator"], llm={"backend": "openai", "model": 'calc:{"principal": "__import__(1)"}'})
    llms: dict[str, LLM] = {"openai": OpenAILLM(base_url, None, "m", 5.0, 0)}
    audits, _ = _split(_runtime(pool, card, llms, ToolRunner(pool)).handle([_task(embedder, QUESTION)]))
    [called] = audits
    assert called.outcome == "invalid_args" and called.result is None
    assert "principal" in (called.error or "")
    assert "failed (invalid_args)" in received[-1]["messages"][1]["content"]


def test_customer_lookup_reads_postgres_and_slow_tools_time_out(pool: ConnectionPool) -> None:
    """The customer tool reads the customers table; a tool slower than the timeout is cut off as `timeout`."""
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO customers (customer_id, name, segment, city, since) VALUES"
            " ('C-1001', 'Ada Lovelace', 'private', 'London', '2020-01-02') ON CONFLICT DO NOTHING"
        )
    card = _card(tools=["customer_lookup", "slow"])
    release = threading.Event()
    slow = Tool("slow", "waits", TOOLS["customer_lookup"].args, lambda a, c: (release.wait(5), {})[1], lambda a, r: "")
    runner = ToolRunner(pool, timeout_s=0.2, tools=TOOLS | {"slow": slow})
    cause = _task_like()
    found = runner.call(card, "customer_lookup", {"customer_id": "C-1001"}, cause, "llm")
    assert found.ok and "Ada Lovelace" in found.text and found.event.result["city"] == "London"
    missing = runner.call(card, "customer_lookup", '{"customer_id": "C-9"}', cause, "llm")
    assert missing.ok and missing.event.result == {"found": False, "customer_id": "C-9"}
    injected = runner.call(card, "customer_lookup", {"customer_id": "1' OR '1'='1"}, cause, "llm")
    assert injected.event.outcome == "invalid_args"
    timed = runner.call(card, "slow", {"customer_id": "C-1"}, cause, "llm")
    release.set()
    assert timed.event.outcome == "timeout" and not timed.ok
    assert runner.call(card, "loan_calculator", {}, cause, "llm").event.outcome == "not_allowed"
    assert runner.unknown({"x": _card(name="x", tools=["nope"])}) == ["x: nope"]
    runner.close()


def _task_like() -> TaskAssigned:
    return TaskAssigned(correlation_id=uuid.uuid4(), agent="banker", text="t", conversation_id="c", embedding="")
