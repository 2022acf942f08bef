"""Ingestion and retrieval against the real embedded PostgreSQL + pgvector and the real ONNX embedder."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from smolit.agents import Ingestor, RawDocument, read_text_files
from smolit.infra.knowledge import KnowledgeStore

pytestmark = pytest.mark.integration

CHEQUES = (
    "To deposit a cheque made out to your business, endorse it with the business name and pay it into the "
    "business account. A bank will usually refuse a cheque payable to a different person."
)
PRIVACY = (
    "We may share personal information with service providers who process it on our behalf. You can ask us to "
    "delete your personal data at any time by contacting support."
)


@pytest.fixture
def collection() -> str:
    return f"c{uuid.uuid4().hex[:8]}"


def test_ingest_then_retrieve_finds_the_relevant_passage(pool: ConnectionPool, embedder, collection: str) -> None:
    """After ingestion the passage that answers a question is retrieved first, with its metadata."""
    store = KnowledgeStore(pool)
    ingestor = Ingestor(store, embedder)
    counts = ingestor.ingest_all(
        collection,
        [RawDocument("bank.md", CHEQUES, "Cheques"), RawDocument("privacy.md", PRIVACY, "Privacy")],
    )
    assert counts == {"added": 2}
    query = embedder.embed(["How do I deposit a cheque issued to my company?"])[0]
    hits = store.search(collection, query, k=2)
    assert [h.source for h in hits] == ["bank.md", "privacy.md"]
    assert hits[0].title == "Cheques"
    assert hits[0].score > hits[1].score
    assert -1.0 <= hits[1].score <= 1.0


def test_search_is_limited_to_the_collection(pool: ConnectionPool, embedder, collection: str) -> None:
    """A collection never returns another collection's chunks."""
    store = KnowledgeStore(pool)
    Ingestor(store, embedder).ingest_all(collection, [RawDocument("bank.md", CHEQUES)])
    Ingestor(store, embedder).ingest_all(collection + "x", [RawDocument("privacy.md", PRIVACY)])
    hits = store.search(collection, embedder.embed(["delete my personal data"])[0], k=5)
    assert {h.source for h in hits} == {"bank.md"}


def test_reingest_is_idempotent_and_changes_replace(pool: ConnectionPool, embedder, collection: str) -> None:
    """Same content again is a no-op; changed content replaces the old chunks."""
    store = KnowledgeStore(pool)
    ingestor = Ingestor(store, embedder)
    assert ingestor.ingest(collection, RawDocument("doc.md", CHEQUES)) == "added"
    assert ingestor.ingest(collection, RawDocument("doc.md", CHEQUES)) == "unchanged"
    assert ingestor.ingest(collection, RawDocument("doc.md", PRIVACY)) == "replaced"
    stats = {s.collection: s for s in store.stats()}[collection]
    assert (stats.documents, stats.chunks) == (1, 1)
    hits = store.search(collection, embedder.embed(["cheque"])[0], k=5)
    assert [h.text for h in hits] == [PRIVACY]


def test_text_files_carry_title_and_path(tmp_path: Path) -> None:
    """Markdown files are read with their first line as title; other file types in a folder are skipped."""
    (tmp_path / "a.md").write_text("# Deposits\n\n" + CHEQUES)
    (tmp_path / "b.bin").write_bytes(b"\x00\x01")
    docs = list(read_text_files(tmp_path))
    assert [d.title for d in docs] == ["Deposits"]
    assert docs[0].source.endswith("a.md")
