"""Agent-to-agent subqueries on the real path: router and agent runtime consumer loops on the embedded broker,
partial answers parked in the embedded Postgres, knowledge in both agents' collections."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.agents import AgentMetrics, AgentRuntime, DeadlineSweeper, Ingestor, ParkingLot, RawDocument, SubqueryPolicy
from smolit.contracts import (
    AgentCard,
    AnswerProduced,
    Event,
    RequestReceived,
    RoutingDecided,
    SubqueryAnswered,
    SubqueryRequested,
    TaskAssigned,
    Topic,
)
from smolit.infra.cards import load_cards
from smolit.infra.kafka import ConsumerLoop, LoopConfig, Outgoing, PostgresDeduper
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.llm import ExtractiveLLM
from smolit.infra.metrics import ConsumerMetrics
from smolit.router import Router, RouterMetrics

from ..conftest import read_events

pytestmark = pytest.mark.integration

QUESTION = (
    "Should I pay off my credit card debt before investing, and can the bank change my card agreement without "
    "telling me?"
)
FINANCE_DOC = (
    "Paying off credit card debt before investing usually wins: card interest of 20% a year is more than most "
    "investments return. Keep a small emergency fund first."
)
LEGAL_DOC = (
    "A card issuer may change the terms of your card agreement, but it must tell you in writing at least 45 days "
    "before the change takes effect. You may reject the change and close the account."
)


@pytest.fixture(scope="module")
def cards(pool: ConnectionPool, embedder) -> dict[str, AgentCard]:
    """The demo cards (finance consults legal and back) reading from fresh collections with one document each."""
    suffix = uuid.uuid4().hex[:8]
    demo = load_cards()
    assert demo["finance"].consults == ("legal",) and demo["legal"].consults == ("finance",)
    out = {name: card.model_copy(update={"collection": f"{name}_{suffix}"}) for name, card in demo.items()}
    ingest = Ingestor(KnowledgeStore(pool), embedder)
    ingest.ingest(out["finance"].knowledge_collection, RawDocument("fiqa#debt", FINANCE_DOC, "Debt or invest"))
    ingest.ingest(out["legal"].knowledge_collection, RawDocument("cfpb#terms", LEGAL_DOC, "Changing card terms"))
    return out


@pytest.fixture(scope="module")
def router(cards, embedder) -> Router:
    metrics = RouterMetrics.create(CollectorRegistry())
    return Router(cards, embedder, fallback="general", threshold=0.25, metrics=metrics)


def _runtime(pool: ConnectionPool, cards: dict[str, AgentCard], timeout_s: float = 8.0) -> AgentRuntime:
    return AgentRuntime(
        cards,
        KnowledgeStore(pool),
        {"extractive": ExtractiveLLM()},
        default_backend="extractive",
        default_top_k=3,
        metrics=AgentMetrics.create(CollectorRegistry()),
        parking=ParkingLot(pool),
        policy=SubqueryPolicy(max_depth=2, budget=2, timeout_s=timeout_s, consult_threshold=0.35),
    )


def _task(router: Router, text: str = QUESTION) -> TaskAssigned:
    request = RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text=text)
    [task] = [o.event for o in router.handle([request]) if o.topic is Topic.TASKS]
    assert isinstance(task, TaskAssigned)
    return task


@pytest.fixture
def running(profile, topics, producer, pool, router, cards) -> Iterator[AgentRuntime]:
    """Router and agents consumer loops plus the deadline sweeper, as `smolit run router|agents` wires them."""
    runtime = _runtime(pool, cards)
    metrics = ConsumerMetrics.create(CollectorRegistry())
    tag = uuid.uuid4().hex[:6]

    def loop(group: str, wanted: list[Topic], handler) -> ConsumerLoop:
        config = LoopConfig(group=f"{group}-{tag}", topics=[topics(t) for t in wanted], batch_size=16)
        return ConsumerLoop(profile.consumer(config.group), config, handler, producer, PostgresDeduper(pool), metrics)

    loops = [
        loop("router", [Topic.REQUESTS], router.handle),
        loop("agents", [Topic.TASKS, Topic.SUBQUERIES, Topic.ANSWERS], runtime.handle),
    ]
    sweeper = DeadlineSweeper(runtime.sweep, runtime.delivered, producer, 0.2)
    threads: list[threading.Thread] = [lp.start_thread() for lp in loops] + [sweeper.start_thread()]
    for lp in loops:
        assert lp.assigned.wait(30), "consumer group join timed out"
    yield runtime
    sweeper.stop()
    for lp in loops:
        lp.stop()
    for thread in threads:
        thread.join(15)


def test_finance_consults_legal_and_answers_with_both_parts(running, profile, topics, producer) -> None:
    """Request → decision → task → subquery → subanswer → answer, one correlation id, sources of both agents."""
    request = RequestReceived(correlation_id=uuid.uuid4(), conversation_id="conv-1", text=QUESTION)
    producer.send(Outgoing(Topic.REQUESTS, request.conversation_id, request))
    producer.flush()

    answers = read_events(profile, topics, Topic.ANSWERS, expect=2, timeout_s=60)
    [decision] = read_events(profile, topics, Topic.DECISIONS, expect=1)
    [task] = read_events(profile, topics, Topic.TASKS, expect=1)
    [subquery] = read_events(profile, topics, Topic.SUBQUERIES, expect=1)
    [subanswer] = [a for a in answers if isinstance(a, SubqueryAnswered)]
    [answer] = [a for a in answers if isinstance(a, AnswerProduced)]

    assert isinstance(decision, RoutingDecided) and decision.agent == "finance"
    assert isinstance(task, TaskAssigned) and task.agent == "finance" and len(task.clauses) == 2
    assert isinstance(subquery, SubqueryRequested)
    assert (subquery.from_agent, subquery.agent, subquery.depth) == ("finance", "legal", 1)
    assert subquery.chain == ("finance",) and subquery.embedding == task.clauses[1].embedding
    assert subquery.text == "can the bank change my card agreement without telling me?"
    chain: list[Event] = [request, decision, task, subquery, subanswer]
    assert all(e.correlation_id == request.correlation_id for e in [*chain, answer])
    assert [e.causation_id for e in chain[1:]] == [e.event_id for e in chain[:-1]]
    assert answer.causation_id == task.event_id and subanswer.subquery_event_id == subquery.event_id

    assert answer.agent == "finance" and answer.subqueries == 1
    assert [s.source for s in answer.sources] == ["fiqa#debt", "cfpb#terms"]
    own, legal = answer.answer.split("\n\nFrom the legal agent: ")
    assert "Paying off credit card debt before investing usually wins" in own and own.endswith("[1]")
    assert "must tell you in writing at least 45 days" in legal and legal.endswith("[2]")


def test_an_unanswered_subquery_is_noted_at_the_deadline(pool, router, cards) -> None:
    """No legal agent answers: the sweep finishes the answer with a note and re-sends it until it is delivered."""
    runtime = _runtime(pool, cards, timeout_s=5)
    task = _task(router)
    [ask] = runtime.handle([task])
    assert isinstance(ask.event, SubqueryRequested) and ask.topic is Topic.SUBQUERIES and ask.key == "legal"
    assert runtime.sweep(datetime.now(UTC)) == []  # not yet due

    later = datetime.now(UTC) + timedelta(seconds=6)
    [(parent_id, out)] = runtime.sweep(later)
    answer = out.event
    assert parent_id == task.event_id and out.topic is Topic.ANSWERS and isinstance(answer, AnswerProduced)
    assert "Note: the legal agent did not answer in time" in answer.answer and answer.subqueries == 1
    assert [s.source for s in answer.sources] == ["fiqa#debt"]
    assert [o.event.event_id for _, o in runtime.sweep(later)] == [answer.event_id]  # not delivered yet: again
    runtime.delivered([parent_id])
    assert runtime.sweep(later) == []
    late = task.caused(
        SubqueryAnswered, producer="t", agent="legal", subquery_event_id=ask.event.event_id, answer="x", latency_ms=1
    )
    assert runtime.handle([late]) == []  # too late: the answer went out without it


def test_a_redelivered_subanswer_repeats_the_same_final_answer(pool, router, cards) -> None:
    """Parking makes the merge idempotent: the same subanswer twice gives the same AnswerProduced event id."""
    runtime = _runtime(pool, cards)
    [ask] = runtime.handle([_task(router)])
    [reply] = runtime.handle([ask.event])
    assert isinstance(reply.event, SubqueryAnswered) and reply.event.error is None
    [first] = runtime.handle([reply.event])
    [again] = runtime.handle([reply.event])
    assert isinstance(first.event, AnswerProduced) and first.event.event_id == again.event.event_id


def test_unknown_agent_and_cycles_answer_with_an_error(pool, router, cards) -> None:
    """A subquery to an unknown agent, or back to an agent already in the chain, is a SubqueryAnswered with error."""
    runtime = _runtime(pool, cards)
    task = _task(router)

    def ask(agent: str, chain: tuple[str, ...]) -> SubqueryRequested:
        return task.caused(
            SubqueryRequested,
            producer="t",
            from_agent=chain[-1],
            agent=agent,
            text="anything",
            parent_event_id=task.event_id,
            depth=len(chain),
            chain=chain,
        )

    [ghost] = runtime.handle([ask("ghost", ("finance",))])
    [cycle] = runtime.handle([ask("finance", ("finance", "legal"))])
    assert isinstance(ghost.event, SubqueryAnswered) and ghost.topic is Topic.ANSWERS
    assert ghost.event.error == "unknown agent 'ghost': no card with that name is loaded" and ghost.event.answer == ""
    assert isinstance(cycle.event, SubqueryAnswered)
    assert cycle.event.error is not None and cycle.event.error.startswith("loop guard")


def test_a_single_question_asks_nobody(pool, router, cards) -> None:
    """Without a clause that another agent owns, the agent answers directly (subqueries = 0)."""
    [out] = _runtime(pool, cards).handle([_task(router, "Should I pay off my credit card debt before investing?")])
    assert isinstance(out.event, AnswerProduced) and out.event.subqueries == 0
