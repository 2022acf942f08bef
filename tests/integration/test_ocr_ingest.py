"""A scanned invoice through the real path: `smolit ingest` with the real OCR model into the embedded PostgreSQL,
then the agent runtime answers a question about its amount from that knowledge; the models it used are listed by
`smolit models list` from the MLflow registry."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from PIL import Image
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner, Result

from smolit.bench_pipelines import render
from smolit.cli import app
from smolit.contracts import Topic
from smolit.infra.cards import load_cards
from smolit.infra.knowledge import KnowledgeStore

from ..agent_calls import ask, extractive_agent
from ..invoices import INVOICE

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """Cards: a unique invoices agent with the `ocr` step and one without it; the test database; own data dir."""
    agent = f"inv{uuid.uuid4().hex[:8]}"
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / f"{agent}.yaml").write_text(
        f"name: {agent}\ndomain: invoices\ndescription: Supplier invoices and amounts due.\n"
        "pipeline:\n  ingest: [ocr]\n"
    )
    (cards / "plain.yaml").write_text("name: plain\ndescription: Text only.\n")
    return {
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_AGENTS_DIR": str(cards),
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "AGENT": agent,
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={k: v for k, v in env.items() if k != "AGENT"})


def test_a_scanned_invoice_is_ingested_by_ocr_and_its_amount_is_answered_with_the_source(
    env: dict[str, str], tmp_path: Path, pool: ConnectionPool, embedder
) -> None:
    """The invoice image is read by OCR into the agent's knowledge; the agent answers the total with the image as
    its source. The same image for an agent without the step fails, and a blank page fails the plausibility check."""
    assert INVOICE.total == "1,284.50"
    scans = tmp_path / "scans"
    scans.mkdir()
    image = scans / "nordwind-invoice.png"
    render(INVOICE, size=28, noise=6.0, seed=1).save(image)
    agent = env["AGENT"]

    result = _cli(env, "ingest", str(image), "--agent", agent, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"] == {"added": 1}
    stored = KnowledgeStore(pool).document(agent, str(image.resolve()))
    assert stored is not None and stored.metadata["format"] == "png"
    assert stored.metadata["ocr"]["model"] == "ppocr-v4-onnx" and stored.metadata["ocr"]["mean_confidence"] > 0.8

    runtime = extractive_agent(load_cards(Path(env["SMOLIT_AGENTS_DIR"]))[agent], pool)
    answer = ask(runtime, agent, f"What is the total amount due on invoice {INVOICE.number}?", embedder)
    assert "1,284.50" in answer.answer
    assert answer.sources and Path(answer.sources[0].source).name == "nordwind-invoice.png"

    Image.new("RGB", (800, 400), "white").save(scans / "blank.png")
    without = _cli(env, "ingest", str(image), "--agent", "plain", "--json")
    assert without.exit_code == 1
    [error] = json.loads(without.stdout)["errors"]
    assert error["outcome"] == "failed" and "pipeline: {ingest: [ocr]}" in error["reason"]
    blank = _cli(env, "ingest", str(scans), "--agent", agent, "--json")
    assert blank.exit_code == 1, blank.output
    report = json.loads(blank.stdout)
    assert report["counts"] == {"failed": 1, "unchanged": 1}
    assert "OCR found too little text (0 letters/digits" in report["errors"][0]["reason"]


def test_a_scanned_pdf_page_is_read_by_ocr(env: dict[str, str], tmp_path: Path, pool: ConnectionPool) -> None:
    """A PDF whose page is only an image (no text layer) is stored with the OCR text of that page, for an agent
    with the step and for the knowledge pool."""
    pdf = tmp_path / "scanned-invoice.pdf"
    render(INVOICE, size=28).save(pdf)
    agent = env["AGENT"]
    result = _cli(env, "ingest", str(pdf), "--agent", agent, "--json")
    assert result.exit_code == 0, result.output
    stored = KnowledgeStore(pool).document(agent, str(pdf.resolve()))
    assert stored is not None and stored.metadata["format"] == "pdf" and stored.metadata["ocr"]["pages"] == [1]
    hits = json.loads(_cli(env, "kb", "search", "total due", "--agent", agent, "--json").stdout)["hits"]
    assert "1,284.50" in hits[0]["text"] and "INV-2026-0417" in hits[0]["text"]
    pooled = _cli(env, "ingest", str(pdf), "--pool", "--json")  # the pool has no card: OCR is always on
    assert pooled.exit_code == 0, pooled.output
    assert json.loads(pooled.stdout)["counts"] == {"added": 1}


def test_models_list_shows_the_ocr_and_embedding_models_and_their_agents(env: dict[str, str]) -> None:
    """Both shipped models are registered once with their tags and a champion; the OCR model names its agent."""
    first = _cli(env, "models", "list", "--json")
    assert first.exit_code == 0, first.output
    again = _cli(env, "models", "list", "--json")
    rows = {r["name"]: r for r in json.loads(again.stdout)}
    ocr, embedder = rows["smolit-ocr"], rows["smolit-embedder"]
    assert (ocr["task_type"], ocr["domain"], ocr["versions"]) == ("ocr", "documents", 1)
    assert "image" in ocr["input_format"] and ocr["aliases"] == {"champion": "1"}
    assert ocr["used_by"] == [env["AGENT"]]
    assert embedder["task_type"] == "text-embedding" and embedder["versions"] == 1
    assert embedder["used_by"] == ["router", env["AGENT"], "plain"]
    upscale = rows["smolit-ocr-upscale"]  # the candidates are models of their own, used by no card here
    assert (upscale["task_type"], upscale["versions"], upscale["used_by"]) == ("ocr", 1, [])
    assert "small print" in upscale["description"] and "angle classifier" in rows["smolit-ocr"]["description"]


def test_bench_pipelines_reports_accuracy_and_records_it_in_the_registry(env: dict[str, str]) -> None:
    """`smolit bench pipelines --record` prints latency and accuracy and logs them on the registered versions; its
    selection part compares the first candidate, the selector and the oracle on the same readings."""
    result = _cli(
        env,
        "bench",
        "pipelines",
        "--images",
        "2",
        "--selection-images",
        "3",
        "--candidates",
        "smolit-ocr-fast,smolit-ocr",
        "--entity-docs",
        "0",
        "--record",
        "--json",
    )
    assert result.exit_code == 0, result.output
    bench = json.loads(result.stdout)
    assert bench["images"] == 2 and bench["ocr_ms_per_image"]["p50"] > 0
    assert 0 <= bench["ocr_cer_ignoring_spaces"] <= bench["ocr_cer"] and bench["amount_digits_rate"] >= 0.5
    assert {k: bench["recorded_versions"][k] for k in ("smolit-ocr", "smolit-embedder")} == {
        "smolit-ocr": "1",
        "smolit-embedder": "1",
    }
    selection = bench["selection"]
    assert selection["kinds"] == {"plain": 1, "upside-down": 1, "small-print": 1}
    assert selection["first"]["picked"] == {"smolit-ocr-fast": 3}
    strategies = ("first", "selector", "selector_no_memory", "selector_with_fallback")
    assert selection["oracle"]["amount_exact_rate"] >= max(selection[k]["amount_exact_rate"] for k in strategies)
    assert selection["gain_exact_over_first"] == round(
        selection["selector"]["amount_exact_rate"] - selection["first"]["amount_exact_rate"], 4
    )
    rows = {r["name"]: r for r in json.loads(_cli(env, "models", "list", "--json").stdout)}
    assert rows["smolit-ocr"]["metrics"]["cer"] == bench["ocr_cer"]
    assert rows["smolit-ocr"]["metrics"]["amount_exact_rate"] == bench["amount_exact_rate"]
    assert rows["smolit-embedder"]["metrics"]["p50_ms_per_document"] == bench["embed_ms_per_document"]["p50"]
    fast = selection["per_candidate"]["smolit-ocr-fast"]
    assert rows["smolit-ocr-fast"]["metrics"]["mixed_amount_exact_rate"] == fast["amount_exact_rate"]


def test_ingest_selects_among_card_candidates_and_records_outcomes_on_the_topic(
    env: dict[str, str], tmp_path: Path, pool: ConnectionPool, broker: str, profile, topics
) -> None:
    """A card listing `smolit-ocr-fast` then `smolit-ocr`: the upside-down scan is read by the candidate with the
    angle classifier; each document's metadata names the candidate that read it and the scores; one
    `ModelOutcomeRecorded` per file, naming the same candidate, lands on the topic."""
    from smolit.contracts import ModelOutcomeRecorded

    from ..conftest import read_events

    agent = f"sel{uuid.uuid4().hex[:8]}"
    (Path(env["SMOLIT_AGENTS_DIR"]) / f"{agent}.yaml").write_text(
        f"name: {agent}\ndomain: invoices\ndescription: Supplier invoices.\n"
        "pipeline:\n  ingest: [ocr]\n  candidates:\n    ocr: [smolit-ocr-fast, smolit-ocr]\n"
    )
    scans = tmp_path / "mixed"
    scans.mkdir()
    render(INVOICE, size=26, seed=2).save(scans / "plain.png")
    render(INVOICE, size=26, rotate=180.6, seed=3).save(scans / "upside-down.png")
    kafka = {"SMOLIT_KAFKA_BOOTSTRAP": broker, "SMOLIT_KAFKA_PROFILE": "tansu" if profile.embedded else "kafka"}
    env = env | kafka | {"SMOLIT_TOPIC_PREFIX": topics.prefix}

    result = _cli(env, "ingest", str(scans), "--agent", agent, "--json")
    assert result.exit_code == 0, result.output
    store = KnowledgeStore(pool)
    plain = store.document(agent, str((scans / "plain.png").resolve()))
    flipped = store.document(agent, str((scans / "upside-down.png").resolve()))
    assert plain is not None and flipped is not None
    assert plain.metadata["ocr"]["model"] in {"smolit-ocr-fast", "smolit-ocr"}
    assert flipped.metadata["ocr"]["model"] == "smolit-ocr"
    assert flipped.metadata["ocr"]["selection"]["features"]["orientation"] == "upside-down"
    assert set(flipped.metadata["ocr"]["selection"]["scores"]) == {"smolit-ocr-fast", "smolit-ocr"}
    events = read_events(profile, topics, Topic.MODEL_OUTCOMES, expect=2)
    assert all(isinstance(e, ModelOutcomeRecorded) and e.agent == agent for e in events)
    # Both readings passed plausibility and their line amounts add up to the total: read right, also upside down.
    assert sorted((e.source, e.model, e.success, e.checks) for e in events) == [  # type: ignore[attr-defined]
        ("plain.png", plain.metadata["ocr"]["model"], True, {"amounts": True}),
        ("upside-down.png", "smolit-ocr", True, {"amounts": True}),
    ]
