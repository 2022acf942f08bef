"""Routing demotion through the real broker: the router follows the agent-lifecycle topic (as `smolit run router`
wires it), stops choosing a flagged agent and never routes to a retired one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.contracts import (
    AgentFlagged,
    AgentRetired,
    RequestReceived,
    RoutingDecided,
    TaskFailed,
    Topic,
    TopicNames,
)
from smolit.infra.cards import load_cards
from smolit.infra.kafka import ConsumerLoop, EventProducer, KafkaProfile, LoopConfig, Outgoing, PostgresDeduper
from smolit.infra.metrics import ConsumerMetrics
from smolit.router import AgentStates, Router, RouterMetrics

from ..conftest import read_events

pytestmark = pytest.mark.integration
LEGAL = "What does the limitation of liability clause in these terms mean?"


def _wait(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_flagged_agent_stops_being_chosen_and_retired_one_never_is(
    embedder, profile: KafkaProfile, topics: TopicNames, producer: EventProducer, pool: ConnectionPool
) -> None:
    """A legal question goes to `legal`; after AgentFlagged (factor 0) to the fallback, still to `legal` when named;
    after AgentRetired it is in no decision's scores and a request naming it fails with the reason."""
    states = AgentStates("general", factor=0.0)
    router = Router(
        load_cards(), embedder, fallback="general", threshold=0.25, metrics=RouterMetrics.create(CollectorRegistry())
    )
    router.states = states
    metrics = ConsumerMetrics.create(CollectorRegistry())
    loops = [
        ConsumerLoop(
            profile.consumer(f"{name}-{uuid.uuid4().hex[:6]}"),
            LoopConfig(group=name, topics=[topics(topic)], dedupe=False),
            handler,
            producer,
            PostgresDeduper(pool),
            metrics,
        )
        for name, topic, handler in (
            ("router", Topic.REQUESTS, router.handle),
            ("lifecycle", Topic.AGENT_LIFECYCLE, states.handle),
        )
    ]
    threads = [loop.start_thread() for loop in loops]
    sent: list[RequestReceived] = []

    def ask(agent: str | None = None) -> RequestReceived:
        request = RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text=LEGAL, agent=agent)
        producer.send(Outgoing(Topic.REQUESTS, "c", request))
        producer.flush()
        sent.append(request)
        return request

    def lifecycle(event: AgentFlagged | AgentRetired) -> None:
        producer.send(Outgoing(Topic.AGENT_LIFECYCLE, event.agent, event))
        producer.flush()

    try:
        assert all(loop.assigned.wait(30) for loop in loops)
        before = ask()
        assert len(read_events(profile, topics, Topic.DECISIONS, expect=1)) == 1  # routed before the flag
        lifecycle(AgentFlagged(correlation_id=uuid.uuid4(), agent="legal", reason="bad outcomes"))
        _wait(lambda: "legal" in states.flagged)
        flagged, named = ask(), ask(agent="legal")
        assert len(read_events(profile, topics, Topic.DECISIONS, expect=3)) == 3  # routed before the retirement
        lifecycle(AgentRetired(correlation_id=uuid.uuid4(), agent="legal", reason="operator"))
        _wait(lambda: "legal" in states.retired)
        retired, refused = ask(), ask(agent="legal")
        decisions = {
            e.correlation_id: e
            for e in read_events(profile, topics, Topic.DECISIONS, expect=4)
            if isinstance(e, RoutingDecided)
        }
        failures = [e for e in read_events(profile, topics, Topic.ANSWERS, expect=1) if isinstance(e, TaskFailed)]
    finally:
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join(15)
    assert decisions[before.request_id].agent == "legal"
    assert decisions[flagged.request_id].agent == "general"
    assert decisions[flagged.request_id].demoted == ("legal",)
    assert decisions[named.request_id].agent == "legal"
    assert decisions[retired.request_id].agent != "legal" and "legal" not in decisions[retired.request_id].scores
    assert refused.request_id not in decisions
    assert [f.correlation_id for f in failures] == [refused.request_id] and "retired" in failures[0].reason


def test_gateway_refuses_requests_naming_a_retired_agent(
    pool: ConnectionPool, producer: EventProducer, profile: KafkaProfile, topics: TopicNames
) -> None:
    """After AgentRetired reaches the gateway's lifecycle projection: the native API answers 410, the OpenAI API 404
    (`model_not_found`, saying retired), `/v1/models` no longer lists it, and no request is published."""
    from fastapi.testclient import TestClient

    from smolit.gateway import GatewayDeps, PendingRequests, create_app
    from smolit.infra.agent_gauges import AgentGaugeProjection, AgentGauges

    registry = CollectorRegistry()
    gauges = AgentGaugeProjection(AgentGauges.create(registry))
    gauges.handle([AgentRetired(correlation_id=uuid.uuid4(), agent="legal", reason="operator")])
    app = create_app(
        GatewayDeps(
            producer=producer,
            pool=pool,
            pending=PendingRequests(),
            cards=load_cards(),
            registry=registry,
            broker_check=lambda: None,
            request_timeout_s=0.2,
            max_request_chars=4000,
            retired=lambda: gauges.retired,
        )
    )
    with TestClient(app) as http:
        native = http.post("/v1/requests", json={"text": LEGAL, "agent": "legal"})
        chat = http.post(
            "/v1/chat/completions", json={"model": "smolit/legal", "messages": [{"role": "user", "content": LEGAL}]}
        )
        listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert native.status_code == 410 and "retired" in native.json()["detail"]
    assert chat.status_code == 404 and "retired" in chat.json()["error"]["message"]
    assert "smolit/legal" not in listed and "smolit/finance" in listed
    assert read_events(profile, topics, Topic.REQUESTS, expect=1, timeout_s=2) == []
