"""Entity extraction through the real path: `smolit ingest` runs the card's `entities` candidates (real spaCy
pipeline and rules, voted) into the embedded PostgreSQL and records each candidate's outcome on the broker; the
stored fields are listed by `smolit kb entities`, used by the agent's answers, registered in MLflow and measured by
`smolit bench pipelines`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner, Result

from smolit.bench_pipelines import render
from smolit.cli import app
from smolit.contracts import AnswerProduced, ModelOutcomeRecorded, Topic
from smolit.infra.cards import load_cards
from smolit.infra.knowledge import KnowledgeStore

from ..agent_calls import ask as ask_agent
from ..agent_calls import extractive_agent
from ..conftest import read_events
from ..invoices import INVOICE as SCANNED
from ..invoices import INVOICE_TEXT as INVOICE

pytestmark = pytest.mark.integration


CONTRACT = """SERVICE AGREEMENT
This Service Agreement is entered into as of 1 March 2026 by and between Acme Robotics GmbH ("Provider") and Blue Harbour Logistics Ltd ("Client").
1. Term. This Agreement shall remain in force for a term of 24 months from the Effective Date.
2. Fees. Client shall pay Provider a monthly fee of EUR 4,200.00.
3. Governing law. This Agreement shall be governed by the laws of Germany.
"""  # noqa: E501  (one sentence per line, as written)


@pytest.fixture
def env(tmp_path: Path, database_url: str, broker: str, profile, topics) -> dict[str, str]:
    """A legal/finance agent whose card votes over the rules and the spaCy ruler; the test database and broker."""
    agent = f"ner{uuid.uuid4().hex[:8]}"
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / f"{agent}.yaml").write_text(
        f"name: {agent}\ndomain: legal\ndescription: Supplier invoices and service contracts.\n"
        "pipeline:\n  ingest: [ocr, entities]\n"
        "  candidates:\n    entities: [smolit-ner-rules, smolit-ner-ruler]\n"
        "  ensemble:\n    entities: vote\n"
    )
    return {
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_AGENTS_DIR": str(cards),
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu" if profile.embedded else "kafka",
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "AGENT": agent,
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={k: v for k, v in env.items() if k != "AGENT"})


def test_ingest_extracts_invoice_and_contract_fields_and_the_agent_answers_with_them(
    env: dict[str, str], tmp_path: Path, pool: ConnectionPool, embedder, profile, topics
) -> None:
    """Both candidates run on the invoice and the contract; the voted fields are in the stored metadata and in
    `kb entities`; a meeting note gets none; each candidate's outcome is on the model-outcomes topic; the agent
    answers "who are the parties" and "what is the total" from the fields chunk, citing the document."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "invoice.txt").write_text(INVOICE)
    (docs / "contract.txt").write_text(CONTRACT)
    (docs / "notes.md").write_text("# Weekly meeting\n\nWe discussed the office move and the new coffee machine.\n")
    render(SCANNED, size=28, noise=6.0, seed=1).save(docs / "scan.png")  # OCR text first, then the fields
    agent = env["AGENT"]

    result = _cli(env, "ingest", str(docs), "--agent", agent, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["counts"] == {"added": 4}
    store = KnowledgeStore(pool)
    invoice = store.document(agent, str((docs / "invoice.txt").resolve()))
    contract = store.document(agent, str((docs / "contract.txt").resolve()))
    notes = store.document(agent, str((docs / "notes.md").resolve()))
    assert invoice is not None and contract is not None and notes is not None
    assert "entities" not in notes.metadata
    meta = invoice.metadata["entities"]
    assert meta["kind"] == "invoice" and meta["models"] == ["smolit-ner-rules", "smolit-ner-ruler"]
    assert meta["model"] == "vote(smolit-ner-rules,smolit-ner-ruler)" and meta["check"]["passed"] is True
    assert meta["fields"] == {
        "invoice_number": "INV-2026-0417",
        "issue_date": "2026-11-03",
        "due_date": "2026-12-03",
        "seller": "Nordwind Office Supplies GmbH",
        "buyer": "Meridian IT Services BV",
        "total": "1284.50",
        "currency": "EUR",
        "line_amounts": ["230.00", "840.42", "214.08"],
    }
    assert set(meta["selection"]["weights"]) == {"smolit-ner-rules", "smolit-ner-ruler"}
    assert contract.metadata["entities"]["fields"] == {
        "parties": ["Acme Robotics GmbH", "Blue Harbour Logistics Ltd"],
        "effective_date": "2026-03-01",
        "term": "24 months",
        "governing_law": "Germany",
        "amounts": ["4200.00"],
    }
    assert contract.chunks == 2  # the text and the fields chunk
    scan = store.document(agent, str((docs / "scan.png").resolve()))
    assert scan is not None and scan.metadata["ocr"]["chars"] > 0
    # The recogniser glues words (`Totaldue:EUR1,284.50`); the rules still read the labelled fields.
    scanned = scan.metadata["entities"]["fields"]
    assert (scanned["invoice_number"], scanned["total"], scanned["currency"]) == ("INV-2026-0417", "1284.50", "EUR")
    assert scanned["line_amounts"] == ["230.00", "840.42", "214.08"] and scan.metadata["entities"]["check"]["passed"]

    listed = _cli(env, "kb", "entities", "--agent", agent, "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["documents"]
    assert [Path(r["source"]).name for r in rows] == ["contract.txt", "invoice.txt", "scan.png"]
    assert rows[1]["fields"]["total"] == "1284.50"

    events = read_events(profile, topics, Topic.MODEL_OUTCOMES, expect=6)
    assert all(isinstance(e, ModelOutcomeRecorded) and e.step == "entities" for e in events)
    assert sorted((e.source, e.model, e.selected_by) for e in events) == sorted(  # type: ignore[attr-defined]
        (str((docs / name).resolve()), model, "ensemble")
        for name in ("contract.txt", "invoice.txt", "scan.png")
        for model in ("smolit-ner-rules", "smolit-ner-ruler")
    )

    runtime = extractive_agent(load_cards(Path(env["SMOLIT_AGENTS_DIR"]))[agent], pool)

    def ask(question: str) -> AnswerProduced:
        return ask_agent(runtime, agent, question, embedder)

    parties = ask("Who are the parties to the service agreement?")
    assert "Parties: Acme Robotics GmbH and Blue Harbour Logistics Ltd." in parties.answer
    assert Path(parties.sources[0].source).name == "contract.txt"
    total = ask("What is the total amount of the Nordwind invoice?")
    assert "Total amount: EUR 1,284.50." in total.answer
    assert Path(total.sources[0].source).name in {"invoice.txt", "scan.png"}  # the same invoice, typed and scanned


def test_ner_models_are_registered_loadable_and_benchmarked(env: dict[str, str]) -> None:
    """`models list` shows the three NER candidates (task type ner) and which agent uses them; the agents' model
    manager resolves and loads one by task type; `bench pipelines --record` measures them and logs the metrics."""
    from smolit.infra.settings import Settings
    from smolit.services.agents import build_model_manager

    result = _cli(env, "models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name in ("smolit-ner", "smolit-ner-ruler", "smolit-ner-rules"):
        assert (rows[name]["task_type"], rows[name]["versions"], rows[name]["aliases"]) == ("ner", 1, {"champion": "1"})
        assert "finance" in rows[name]["domain"] and rows[name]["input_format"].startswith("text")
    assert rows["smolit-ner-rules"]["used_by"] == [env["AGENT"]] and rows["smolit-ner"]["used_by"] == []

    settings = Settings(data_dir=Path(env["SMOLIT_DATA_DIR"]), agents_dir=Path(env["SMOLIT_AGENTS_DIR"]))
    loaded = build_model_manager(settings).for_task("ner", prefer=["smolit-ner-rules"])
    assert (loaded.name, loaded.version, loaded.task_type) == ("smolit-ner-rules", "1", "ner")
    assert loaded.model.extract(INVOICE).fields["total"] == "1284.50"

    bench = _cli(
        env,
        "bench",
        "pipelines",
        "--images",
        "0",
        "--selection-images",
        "0",
        "--entity-docs",
        "6",
        "--record",
        "--json",
    )
    assert bench.exit_code == 0, bench.output
    entities = json.loads(bench.stdout)["entities"]
    assert entities["documents"] == 6 and entities["kinds"] == {"invoice": 3, "contract": 3}
    assert entities["selection"]["first"]["model"] == "smolit-ner-ruler"
    for key, gain in entities["gain_over_first"].items():
        first = entities["selection"]["first"]["field_accuracy"]
        assert gain == round(entities["selection"][key]["field_accuracy"] - first, 4)
    rows = {r["name"]: r for r in json.loads(_cli(env, "models", "list", "--json").stdout)}
    for name, summary in entities["per_candidate"].items():
        assert rows[name]["metrics"]["field_accuracy"] == summary["field_accuracy"]


def test_checks_declared_in_the_card_decide_what_passes(
    tmp_path: Path, database_url: str, broker: str, profile, topics, pool: ConnectionPool
) -> None:
    """`pipeline.checks` in the card: an invoice without the required `due_date` fails the entities check (no fields
    chunk), one with it passes; a scanned page below the card's `ocr.min_chars` fails its file with that number."""
    agent = f"chk{uuid.uuid4().hex[:8]}"
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / f"{agent}.yaml").write_text(
        f"name: {agent}\ndomain: finance\ndescription: Supplier invoices.\n"
        "pipeline:\n  ingest: [ocr, entities]\n"
        "  candidates:\n    entities: [smolit-ner-rules]\n"
        "  checks:\n    ocr: {min_chars: 100000}\n    entities: {require: [invoice_number, due_date]}\n"
    )
    env = {
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_AGENTS_DIR": str(cards),
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu" if profile.embedded else "kafka",
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
    }
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "with-due.txt").write_text(INVOICE)
    (docs / "without-due.txt").write_text(INVOICE.replace("Due date: 03.12.2026\n", ""))
    render(SCANNED, size=28, noise=6.0, seed=1).save(docs / "scan.png")

    result = CliRunner().invoke(app, ["ingest", str(docs), "--agent", agent, "--json"], env=env)
    assert result.exit_code == 1, result.output  # the scan failed its check: a per-file error
    assert "need 100000" in result.output
    store = KnowledgeStore(pool)
    passed = store.document(agent, str((docs / "with-due.txt").resolve()))
    failed = store.document(agent, str((docs / "without-due.txt").resolve()))
    assert passed is not None and failed is not None
    assert {"passed": True, "required": True}.items() <= passed.metadata["entities"]["check"].items()
    assert {"passed": False, "required": False}.items() <= failed.metadata["entities"]["check"].items()
    assert (passed.chunks, failed.chunks) == (2, 1)  # only a passing extraction becomes a fields chunk
    assert store.document(agent, str((docs / "scan.png").resolve())) is None
