"""Feedback through the real gateway app (served by uvicorn) onto the real broker, with the real database."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner

from smolit.cli import app as cli
from smolit.contracts import AnswerProduced, FeedbackGiven, RequestReceived, Topic, TopicNames
from smolit.gateway import AnswerProjection, GatewayDeps, PendingRequests, create_app
from smolit.infra.cards import load_cards
from smolit.infra.embedded import free_port
from smolit.infra.kafka import EventProducer, KafkaProfile

from ..conftest import read_events, read_topic

pytestmark = pytest.mark.integration


@dataclass
class Gateway:
    url: str
    pool: ConnectionPool
    projection: AnswerProjection


@pytest.fixture
def gateway(producer: EventProducer, pool: ConnectionPool) -> Iterator[Gateway]:
    """The gateway app on a free port, with a producer poll thread as `smolit run gateway` has."""
    pending = PendingRequests()
    app = create_app(
        GatewayDeps(
            producer=producer,
            pool=pool,
            pending=pending,
            cards=load_cards(),
            registry=CollectorRegistry(),
            broker_check=lambda: None,
            request_timeout_s=0.2,  # no router runs here: requests answer 504 and stay recorded
            max_request_chars=4000,
        )
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            producer.poll(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    serving = threading.Thread(target=server.run, daemon=True)
    poller.start()
    serving.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield Gateway(f"http://127.0.0.1:{port}", pool, AnswerProjection(pool, pending))
    finally:
        server.should_exit = True
        serving.join(10)
        stop.set()
        poller.join(5)


def _answered_request(gw: Gateway, agent: str = "finance") -> tuple[str, AnswerProduced]:
    """A request posted to the gateway and its answer projected from an AnswerProduced event."""
    response = httpx.post(f"{gw.url}/v1/requests", json={"text": "How are dividends taxed?"}, timeout=10)
    assert response.status_code == 504
    request_id = response.json()["request_id"]
    request = RequestReceived(correlation_id=uuid.UUID(request_id), conversation_id="c", text="x")
    answer = request.caused(AnswerProduced, producer="agents", agent=agent, answer="a", backend="x", latency_ms=1.0)
    gw.projection.handle([answer])
    return request_id, answer


def test_feedback_is_published_once_per_user(gateway: Gateway, profile: KafkaProfile, topics: TopicNames) -> None:
    """The first feedback per user is published keyed by request id and caused by the answer; a repeat is not."""
    request_id, answer = _answered_request(gateway)
    body = {"request_id": request_id, "rating": -1, "comment": "wrong fund", "user": "ann"}
    first = httpx.post(f"{gateway.url}/v1/feedback", json=body, timeout=10)
    assert first.status_code == 201, first.text
    assert first.json()["duplicate"] is False and first.json()["sentiment"] == "negative"
    again = httpx.post(f"{gateway.url}/v1/feedback", json=body | {"rating": 1}, timeout=10)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["feedback_id"] == first.json()["feedback_id"]
    other = httpx.post(
        f"{gateway.url}/v1/feedback", json=body | {"user": "bob", "rating": 5, "preferred_agent": "legal"}, timeout=10
    )
    assert other.status_code == 201

    records = read_topic(profile, topics(Topic.FEEDBACK), expect=3, timeout_s=5)
    assert len(records) == 2  # ann once, bob once
    assert {k for k, _ in records} == {request_id.encode()}
    events = read_events(profile, topics, Topic.FEEDBACK, expect=2)
    ann = next(e for e in events if isinstance(e, FeedbackGiven) and e.user == "ann")
    assert (ann.rating, ann.comment, ann.sentiment) == (-1, "wrong fund", "negative")
    assert ann.correlation_id == uuid.UUID(request_id) and ann.causation_id == answer.event_id
    bob = next(e for e in events if isinstance(e, FeedbackGiven) and e.user == "bob")
    assert bob.preferred_agent == "legal"

    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'smolit_feedback_total{agent="finance",sentiment="negative"} 1.0' in metrics
    assert 'smolit_feedback_total{agent="finance",sentiment="positive"} 1.0' in metrics
    assert "smolit_feedback_duplicates_total 1.0" in metrics


def test_feedback_errors(gateway: Gateway) -> None:
    """Unknown request ids answer 404 with a JSON error; ratings outside -1/+1 and 1–5 answer 422."""
    request_id, _ = _answered_request(gateway)
    unknown = httpx.post(f"{gateway.url}/v1/feedback", json={"request_id": str(uuid.uuid4()), "rating": 1})
    assert unknown.status_code == 404 and "unknown request id" in unknown.json()["detail"]
    for bad in (
        {"rating": 0},
        {"rating": 6},
        {"rating": -2},
        {"rating": 3, "scale": "thumbs"},
        {"rating": "x"},
        {"rating": -1, "preferred_agent": "astrology"},
    ):
        response = httpx.post(f"{gateway.url}/v1/feedback", json={"request_id": request_id} | bad)
        assert response.status_code == 422, bad
        assert "detail" in response.json()


def test_cli_feedback_through_the_gateway(gateway: Gateway, profile: KafkaProfile, topics: TopicNames) -> None:
    """`smolit feedback ID --bad` and `--rating N` post to the gateway; stars keep their scale on the event."""
    request_id, _ = _answered_request(gateway, agent="legal")
    runner = CliRunner()
    bad = runner.invoke(cli, ["feedback", request_id, "--bad", "--comment", "vague", "--url", gateway.url])
    assert bad.exit_code == 0, bad.output
    assert "negative feedback" in bad.output and "legal" in bad.output
    stars = runner.invoke(cli, ["feedback", request_id, "--rating", "1", "--user", "cy", "--url", gateway.url])
    assert stars.exit_code == 0, stars.output
    repeat = runner.invoke(cli, ["feedback", request_id, "--good", "--url", gateway.url])
    assert repeat.exit_code == 0 and "already rated" in repeat.output
    neither = runner.invoke(cli, ["feedback", request_id, "--url", gateway.url])
    assert neither.exit_code != 0
    unknown = runner.invoke(cli, ["feedback", str(uuid.uuid4()), "--good", "--url", gateway.url])
    assert unknown.exit_code == 1

    events = read_events(profile, topics, Topic.FEEDBACK, expect=2)
    by_user = {e.user: e for e in events if isinstance(e, FeedbackGiven)}
    assert (by_user[None].rating, by_user[None].scale, by_user[None].comment) == (-1, "thumbs", "vague")
    assert (by_user["cy"].rating, by_user["cy"].scale, by_user["cy"].sentiment) == (1, "stars", "negative")
