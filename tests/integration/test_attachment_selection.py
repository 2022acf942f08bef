"""Request attachments and the selector through the real path: the agents service (`run_agents`, real wiring) on the
embedded broker, PostgreSQL and an MLflow sqlite registry, with an invoices card listing two OCR candidates. The
model memory comes from the model-outcomes topic (replayed at start) and from the service's own readings."""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.bench_pipelines import render
from smolit.contracts import ModelOutcomeRecorded, TaskAssigned, Topic, TopicNames, pack_vector
from smolit.contracts.parts import Attachment
from smolit.gateway import GatewayDeps, PendingRequests, create_app
from smolit.infra.cards import load_cards
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.services.agents import run_agents

from ..conftest import read_events
from ..invoices import INVOICE
from .service_thread import service_settings, service_thread
from .test_model_hot_swap import _answer

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, broker: str, database_url: str, topics: TopicNames) -> dict[str, str]:
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "invoices.yaml").write_text(
        "name: invoices\ndomain: invoices\ndescription: Supplier invoices and amounts due.\n"
        "pipeline:\n  request: [ocr]\n  candidates:\n    ocr: [smolit-ocr-fast, smolit-ocr]\n"
    )
    return {
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_AGENTS_DIR": str(cards),
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "SMOLIT_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow/mlflow.db",
    }


def _ask(
    producer: EventProducer, embedder, n: int, upside_down: bool, hints: dict[str, str] | None = None
) -> TaskAssigned:
    page = render(INVOICE, size=28, noise=6.0, seed=1)
    buffer = io.BytesIO()
    (page.rotate(180) if upside_down else page).save(buffer, format="JPEG")
    question = f"What is the total amount due on invoice {INVOICE.number}? ({n})"
    task = TaskAssigned(
        correlation_id=uuid.uuid4(),
        agent="invoices",
        text=question,
        conversation_id=f"c{n}",
        embedding=pack_vector(embedder.embed([question])[0].tolist()),
        attachments=(
            Attachment(name=f"scan{n}.jpg", media_type="image/jpeg", data=base64.b64encode(buffer.getvalue()).decode()),
        ),
        model_hints=hints or {},
    )
    producer.send(Outgoing(Topic.TASKS, "invoices", task))
    producer.flush(10)
    return task


def test_the_selector_picks_the_ocr_candidate_per_attachment_from_page_features_and_the_topics_memory(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames, producer: EventProducer, embedder
) -> None:
    """Upright page: a tie on fit, decided by the memory, whose only evidence is three failures of the fast
    candidate on such pages published on the model-outcomes topic before the service started: `smolit-ocr`.
    Upside-down page: `smolit-ocr` by fit (the fast one has no angle classifier). Both answers carry the amount, the
    chosen model with every candidate's score, and a `selected_by: selector` outcome."""
    features = {"format": "jpg", "font": "normal", "orientation": "upright", "contrast": "normal", "domain": "invoices"}
    for _ in range(3):
        failure = ModelOutcomeRecorded(
            correlation_id=uuid.uuid4(), producer="ingest", model="smolit-ocr-fast", features=features, success=False
        )
        producer.send(Outgoing(Topic.MODEL_OUTCOMES, "smolit-ocr-fast", failure))
    producer.flush(10)
    with service_thread(service_settings(env), "agents", run_agents):
        # Upright first: only the topic's failures can tip its tie (no reading of this service precedes it).
        upright = _answer(profile, topics, _ask(producer, embedder, 1, upside_down=False), 0)
        turned = _answer(profile, topics, _ask(producer, embedder, 2, upside_down=True), 1)
        # The router's hint names a candidate: it is followed although the memory speaks against that model.
        hinted = _answer(profile, topics, _ask(producer, embedder, 3, False, {"ocr": "smolit-ocr-fast"}), 2)
    for answer in (turned, upright):
        [use] = answer.models
        assert (use.name, use.error) == ("smolit-ocr", None), use
        assert use.scores["smolit-ocr"] > use.scores["smolit-ocr-fast"]
        assert "1,284.50" in answer.answer
    [use] = hinted.models
    assert (use.name, use.selected_by, use.error) == ("smolit-ocr-fast", "hint", None)
    assert "1,284.50" in hinted.answer
    outcomes = read_events(profile, topics, Topic.MODEL_OUTCOMES, 6)[3:]
    assert [(o.model, o.selected_by, o.success, o.features["orientation"]) for o in outcomes] == [  # type: ignore[attr-defined]
        ("smolit-ocr", "selector", True, "upright"),
        ("smolit-ocr", "selector", True, "upside-down"),
        ("smolit-ocr-fast", "hint", True, "upright"),
    ]


def test_the_gateway_refuses_a_hint_for_an_unknown_model_and_publishes_a_known_one(
    producer: EventProducer, pool: ConnectionPool, profile: KafkaProfile, topics: TopicNames
) -> None:
    """`POST /v1/requests` with `models: {ocr: tesseract}` answers 422 naming the registered OCR models; a known
    hint travels in the published `RequestReceived`."""
    client = TestClient(
        create_app(
            GatewayDeps(
                producer=producer,
                pool=pool,
                pending=PendingRequests(),
                cards=load_cards(),
                registry=CollectorRegistry(),
                broker_check=lambda: None,
                request_timeout_s=0.2,  # no router here: an accepted request answers 504 after publishing
                max_request_chars=4000,
            )
        )
    )
    unknown = client.post("/v1/requests", json={"text": "total?", "models": {"ocr": "tesseract"}})
    assert unknown.status_code == 422 and "unknown ocr model 'tesseract'" in unknown.text
    assert "smolit-ocr-upscale" in unknown.text
    step = client.post("/v1/requests", json={"text": "total?", "models": {"asr": "whisper"}})
    assert step.status_code == 422 and "unknown step 'asr'" in step.text
    accepted = client.post("/v1/requests", json={"text": "total?", "models": {"ocr": "smolit-ocr-upscale"}})
    assert accepted.status_code == 504
    [request] = read_events(profile, topics, Topic.REQUESTS, 1)
    assert request.model_hints == {"ocr": "smolit-ocr-upscale"}  # type: ignore[attr-defined]
