"""Hot swap of a pipeline model through the real path: the agents service (`run_agents` with its consumer loops) on
the embedded broker and PostgreSQL reads a request's invoice attachment with `smolit-ocr@champion` from a real
MLflow sqlite registry; `smolit models register-ocr` + `smolit models promote` move the alias and announce
`ModelPromoted`, and the next request is read by the new version without a restart. The gateway's attachment limits
are checked through the real app."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner, Result

from smolit.agents import AttachmentReader, ModelManager, OcrLoader
from smolit.bench_pipelines import render
from smolit.cli import app
from smolit.contracts import AnswerProduced, Attachment, RequestReceived, TaskAssigned, Topic, TopicNames, pack_vector
from smolit.gateway import GatewayDeps, PendingRequests, create_app
from smolit.infra.cards import load_cards
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.registry import open_registry
from smolit.infra.shipped_models import register_shipped_models
from smolit.services.agents import run_agents

from ..conftest import read_events
from ..invoices import INVOICE
from .chat_stack import running_stack
from .service_thread import service_settings, service_thread

pytestmark = pytest.mark.integration


def _scan_b64() -> str:
    """The invoice as a noisy JPEG scan (~43 KB; a noisy PNG would be ~250 KB, over the default size limit)."""
    buffer = io.BytesIO()
    render(INVOICE, size=28, noise=6.0, seed=1).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def env(tmp_path: Path, broker: str, database_url: str, topics: TopicNames) -> dict[str, str]:
    """An invoices agent whose card reads request attachments (`pipeline.request: [ocr]`), own data dir and MLflow."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "invoices.yaml").write_text(
        "name: invoices\ndomain: invoices\ndescription: Supplier invoices and amounts due.\n"
        "pipeline:\n  request: [ocr]\n"
    )
    return {
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu",
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_AGENTS_DIR": str(cards),
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "SMOLIT_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow/mlflow.db",
        "SMOLIT_THREADS": "1",
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


@contextmanager
def _agents_service(env: dict[str, str]) -> Iterator[None]:
    """`smolit run agents` in a thread: the real wiring (start-up checks, producer, pool) and consumer loops."""
    with service_thread(service_settings(env), "agents", run_agents):
        yield


def _ask(producer: EventProducer, embedder, n: int) -> TaskAssigned:
    question = f"What is the total amount due on invoice {INVOICE.number}? ({n})"
    task = TaskAssigned(
        correlation_id=uuid.uuid4(),
        agent="invoices",
        text=question,
        conversation_id=f"c{n}",
        embedding=pack_vector(embedder.embed([question])[0].tolist()),
        attachments=(Attachment(name="nordwind-invoice.jpg", media_type="image/jpeg", data=_scan_b64()),),
    )
    producer.send(Outgoing(Topic.TASKS, "invoices", task))
    producer.flush(10)
    return task


def _answer(profile: KafkaProfile, topics: TopicNames, task: TaskAssigned, seen: int) -> AnswerProduced:
    events = read_events(profile, topics, Topic.ANSWERS, seen + 1, timeout_s=120)
    [answer] = [e for e in events if e.correlation_id == task.correlation_id]
    assert isinstance(answer, AnswerProduced), answer
    return answer


def test_a_promoted_ocr_version_reads_the_next_request_without_a_restart(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames, producer: EventProducer, embedder
) -> None:
    """V1 (`smolit-ocr@champion`) reads the attachment and the answer has the amount; after `register-ocr` and
    `promote`, a later request is read by V2 in the same running service. The service registered the shipped
    models itself (nobody ran `smolit models list`)."""
    # Nothing registered yet: the service registers the shipped models itself (smolit-ocr version 1 is champion).
    with _agents_service(env):
        first = _answer(profile, topics, _ask(producer, embedder, 1), 0)
        assert "1,284.50" in first.answer
        assert first.sources[0].source == "attachment:nordwind-invoice.jpg"
        [use] = first.models
        assert (use.step, use.name, use.version, use.error) == ("ocr", "smolit-ocr", "1", None)

        registered = _cli(env, "models", "register-ocr", "smolit-ocr", "--config", "smolit-ocr-fast")
        assert registered.exit_code == 0, registered.output
        assert "smolit-ocr version 2 runs the smolit-ocr-fast configuration" in registered.stdout
        promoted = _cli(env, "models", "promote", "smolit-ocr", "2")
        assert promoted.exit_code == 0, promoted.output
        swapped_at = time.monotonic()
        [event] = read_events(profile, topics, Topic.ROUTER_MODELS, 1)
        assert (event.type, event.registry_name, event.version, event.previous_version) == (  # type: ignore[attr-defined]
            "ModelPromoted",
            "smolit-ocr",
            "2",
            "1",
        )

        # The promotion and the next tasks travel on different topics: ask until an answer names the new version.
        versions, seen = [], 1
        for n in range(2, 8):
            answer = _answer(profile, topics, _ask(producer, embedder, n), seen)
            seen += 1
            versions.append(answer.models[0].version)
            if versions[-1] == "2":
                break
        assert versions[-1] == "2", versions
        assert "1,284.50" in answer.answer and answer.models[0].error is None
        print(json.dumps({"swap_visible_after_s": round(time.monotonic() - swapped_at, 2), "versions": versions}))
        # Every reading is also a model-memory outcome with the version that read it.
        outcomes = read_events(profile, topics, Topic.MODEL_OUTCOMES, 1 + len(versions))
        assert [(o.model, o.version, o.success) for o in outcomes] == [  # type: ignore[attr-defined]
            ("smolit-ocr", v, True) for v in ["1", *versions]
        ]

    versions_json = json.loads(_cli(env, "models", "list", "--json").stdout)
    [ocr] = [m for m in versions_json if m["name"] == "smolit-ocr"]
    assert ocr["aliases"] == {"champion": "2", "previous": "1"}
    again = _cli(env, "models", "promote", "smolit-ocr", "2")
    assert "version 2 of smolit-ocr is already the champion" in str(again.exception)  # SetupError: one line
    missing = _cli(env, "models", "promote", "smolit-ocr", "9")
    assert "smolit-ocr has no version 9" in str(missing.exception)
    unknown = _cli(env, "models", "register-ocr", "smolit-ocr", "--config", "tesseract")
    assert "unknown OCR configuration 'tesseract'" in str(unknown.exception)
    same = _cli(env, "models", "register-ocr", "smolit-ocr", "--config", "smolit-ocr-fast")
    assert "smolit-ocr version 2 runs" in same.stdout  # registering a configuration twice adds no version


def test_the_gateway_checks_attachment_count_size_and_type(
    producer: EventProducer, pool: ConnectionPool, profile: KafkaProfile, topics: TopicNames
) -> None:
    """Too many attachments or bad base64: 422; too many bytes: 413 naming the setting; a valid one is published
    with the request."""
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
                max_attachments=2,
                max_attachment_bytes=20_000,
            )
        )
    )
    image = _scan_b64()
    one = {"name": "scan.jpg", "media_type": "image/jpeg", "data": image}
    small = {"name": "tiny.png", "media_type": "image/png", "data": base64.b64encode(b"x" * 100).decode()}

    too_many = client.post("/v1/requests", json={"text": "total?", "attachments": [small] * 3})
    assert too_many.status_code == 422 and "SMOLIT_MAX_ATTACHMENTS" in too_many.text
    bad = client.post("/v1/requests", json={"text": "total?", "attachments": [small | {"data": "!!"}]})
    assert bad.status_code == 422 and "not valid base64" in bad.text
    pdf = client.post(
        "/v1/requests", json={"text": "total?", "attachments": [small | {"media_type": "application/pdf"}]}
    )
    assert pdf.status_code == 422 and "unsupported attachment type" in pdf.text
    assert len(base64.b64decode(image)) > 20_000
    big = client.post("/v1/requests", json={"text": "total?", "attachments": [one]})
    assert big.status_code == 413 and "SMOLIT_MAX_ATTACHMENT_BYTES" in big.text

    accepted = client.post("/v1/requests", json={"text": "total?", "attachments": [small]})
    assert accepted.status_code == 504
    [request] = read_events(profile, topics, Topic.REQUESTS, 1)
    assert isinstance(request, RequestReceived)
    assert request.attachments == (Attachment(name="tiny.png", media_type="image/png", data=small["data"]),)


def test_smolit_ask_with_an_attachment_goes_through_gateway_router_and_agent(
    broker: str, pool: ConnectionPool, embedder, tmp_path: Path
) -> None:
    """`smolit ask --attach scan.jpg` → gateway → router → the finance agent, whose manager-resolved OCR model reads
    the scan: the answer has the amount and names `smolit-ocr` version 1; a non-image file is refused by the CLI."""
    registry = open_registry(f"sqlite:///{tmp_path}/mlflow/mlflow.db", tmp_path / "data", "smolit-models")
    assert register_shipped_models(registry)["smolit-ocr"] == "1"
    reader = AttachmentReader(ModelManager(lambda: registry, {"ocr": OcrLoader(1)}))
    scan = tmp_path / "nordwind-invoice.jpg"
    scan.write_bytes(base64.b64decode(_scan_b64()))
    with running_stack(broker, pool, embedder, 60.0, reader, reads_attachments="finance") as stack:
        question = f"What is the total amount due on invoice {INVOICE.number}?"
        result = CliRunner().invoke(
            app, ["ask", question, "--agent", "finance", "--attach", str(scan), "--url", stack.url, "--json"]
        )
        assert result.exit_code == 0, result.output
        # The service threads' log lines share the captured stdout: decode the JSON object that starts a line.
        start = result.stdout.index("{\n") if result.stdout.startswith("{") else result.stdout.index("\n{\n") + 1
        answer, _ = json.JSONDecoder().raw_decode(result.stdout[start:])
        assert answer["agent"] == "finance" and "1,284.50" in answer["answer"]
        assert answer["sources"][0]["source"] == "attachment:nordwind-invoice.jpg"
        [use] = answer["models"]
        assert (use["name"], use["version"], use["input"], use["error"]) == (
            "smolit-ocr",
            "1",
            "nordwind-invoice.jpg",
            None,
        )
        notes = tmp_path / "notes.txt"
        notes.write_text("not an image")
        refused = CliRunner().invoke(app, ["ask", "total?", "--attach", str(notes), "--url", stack.url])
        assert "attachments are images" in str(refused.exception)
    reader.close()
