"""`smolit ingest`, `smolit kb search` and `smolit agents` through the CLI against the real embedded PostgreSQL."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner, Result

from smolit.agents import content_hash
from smolit.cli import app
from smolit.infra.knowledge import KnowledgeStore

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent.parent / "fixtures"
INDEX_FUNDS = (
    "An index fund buys every share of a market index, so its return follows the index minus a small fee. "
    "Low costs are the main reason index funds beat most actively managed funds over long periods."
)
MORTGAGE = "Refinancing a mortgage replaces the old loan with a new one, usually to get a lower interest rate."


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """A one-agent card folder with a unique agent (so a unique collection) and the test database."""
    agent = f"kb{uuid.uuid4().hex[:8]}"
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / f"{agent}.yaml").write_text(f"name: {agent}\ndomain: money\ndescription: Personal finance.\n")
    return {
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_AGENTS_DIR": str(cards),
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "AGENT": agent,
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={k: v for k, v in env.items() if k != "AGENT"})


def _docs(folder: Path) -> Path:
    folder.mkdir()
    (folder / "funds.md").write_text("# Index funds\n\n" + INDEX_FUNDS)
    (folder / "mortgage.html").write_text(f"<html><title>Refinancing</title><body><p>{MORTGAGE}</p></body></html>")
    shutil.copy(FIXTURES / "cheques.pdf", folder / "cheques.pdf")
    (folder / "faq.jsonl").write_text(
        json.dumps(
            {"text": "A Roth IRA is funded with taxed income; withdrawals in retirement are tax free.", "id": "q1"}
        )
        + "\n"
        + json.dumps({"text": "A 401k is an employer retirement plan funded before tax.", "title": "401k", "id": "q2"})
        + "\n"
    )
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    (folder / "photo.png").write_bytes(b"\x89PNG")
    return folder


def test_ingest_reports_per_file_errors_records_metadata_and_is_idempotent(
    env: dict[str, str], tmp_path: Path, pool: ConnectionPool
) -> None:
    """Good files are stored with metadata; a broken PDF fails (exit 1), an image is skipped; reruns change nothing."""
    folder = _docs(tmp_path / "docs")
    agent = env["AGENT"]
    first = _cli(env, "ingest", str(folder), "--agent", agent, "--source-field", "id", "--json")
    assert first.exit_code == 1, first.output
    report = json.loads(first.stdout)
    assert report["counts"] == {"added": 5, "failed": 1, "skipped": 1}
    reasons = {Path(e["source"]).name: (e["outcome"], e["reason"]) for e in report["errors"]}
    assert reasons["broken.pdf"][0] == "failed" and "unreadable PDF" in reasons["broken.pdf"][1]
    assert reasons["photo.png"][0] == "skipped"

    store = KnowledgeStore(pool)
    md = store.document(agent, str((folder / "funds.md").resolve()))
    assert md is not None
    assert (md.title, md.domain, md.content_hash) == (
        "Index funds",
        "money",
        content_hash("# Index funds\n\n" + INDEX_FUNDS),
    )
    assert md.metadata["format"] == "md" and md.chunks == 1 and md.ingested_at is not None
    pdf = store.document(agent, str((folder / "cheques.pdf").resolve()))
    assert pdf is not None and pdf.title == "Cheque deposits" and pdf.metadata["format"] == "pdf"
    q2 = store.document(agent, "q2")
    assert q2 is not None and q2.title == "401k" and q2.metadata["line"] == 2

    (folder / "broken.pdf").unlink()
    again = _cli(env, "ingest", str(folder), "--agent", agent, "--source-field", "id", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["counts"] == {"skipped": 1, "unchanged": 5}
    md_again = store.document(agent, md.source)
    assert md_again is not None and md_again.ingested_at == md.ingested_at


def test_changed_content_replaces_its_chunks(env: dict[str, str], tmp_path: Path, pool: ConnectionPool) -> None:
    """Editing a file and ingesting it again replaces the document's chunks; search no longer finds the old text."""
    file = tmp_path / "note.txt"
    file.write_text(INDEX_FUNDS)
    agent = env["AGENT"]
    assert _cli(env, "ingest", str(file), "--agent", agent).exit_code == 0
    file.write_text(MORTGAGE)
    result = _cli(env, "ingest", str(file), "--agent", agent, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"] == {"replaced": 1}
    stats = {s.collection: s for s in KnowledgeStore(pool).stats()}[agent]
    assert (stats.documents, stats.chunks) == (1, 1)
    hits = json.loads(_cli(env, "kb", "search", "index fund fees", "--agent", agent, "--json").stdout)["hits"]
    assert [h["text"] for h in hits] == [MORTGAGE]


def test_kb_search_ranks_chunks_and_agents_counts_them(env: dict[str, str], tmp_path: Path) -> None:
    """`kb search` returns the best matching chunk first with descending scores; `agents` shows the counts."""
    folder = _docs(tmp_path / "docs")
    agent = env["AGENT"]
    _cli(env, "ingest", str(folder), "--agent", agent, "--source-field", "id")
    result = _cli(env, "kb", "search", "Are withdrawals from a Roth IRA taxed?", "--agent", agent, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert len(hits) == 3 and hits[0]["source"] == "q1"
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    exact = json.loads(
        _cli(
            env,
            "kb",
            "search",
            "Are withdrawals from a Roth IRA taxed?",
            "--agent",
            agent,
            "-k",
            "3",
            "--exact",
            "--json",
        ).stdout
    )["hits"]
    assert [h["chunk_id"] for h in exact] == [h["chunk_id"] for h in hits]

    table = _cli(env, "kb", "search", "refinance my mortgage", "--agent", agent)
    assert table.exit_code == 0 and "Refinancing" in table.stdout
    listed = json.loads(_cli(env, "agents", "--json").stdout)
    assert listed == [
        {
            "agent": agent,
            "domain": "money",
            "documents": 5,
            "chunks": 5,
            "description": "Personal finance.",
            "version": 1,
            "status": None,  # no broker in this test: flags are unknown, not absent
            "flag": None,
            "retired": None,
            "challenger": None,
        }
    ]


def test_unknown_agent_is_a_setup_error(env: dict[str, str], tmp_path: Path) -> None:
    """Ingesting into an agent that has no card names the known agents instead of creating a collection."""
    (tmp_path / "a.txt").write_text(INDEX_FUNDS)
    result = _cli(env, "ingest", str(tmp_path / "a.txt"), "--agent", "nobody")
    assert result.exit_code != 0
    assert env["AGENT"] in str(result.exception)


def test_demo_load_ingests_every_demo_agent_and_is_idempotent(database_url: str, tmp_path: Path) -> None:
    """`smolit demo load --limit 2` stores real documents for finance, legal and health; a rerun changes nothing."""
    env = {"SMOLIT_DATABASE_URL": database_url, "SMOLIT_DATA_DIR": str(tmp_path)}
    first = CliRunner().invoke(app, ["demo", "load", "--limit", "2"], env=env)
    assert first.exit_code == 0, first.output
    for label in ("finance: Fiqa", "legal: Privacy-Policy", "health: PubMedQA/pqal"):
        assert f"{label}: added: 2" in first.stdout
    again = CliRunner().invoke(app, ["demo", "load", "--limit", "2"], env=env)
    assert again.exit_code == 0 and "health: PubMedQA/pqal: unchanged: 2" in again.stdout
    assert "added" not in again.stdout
