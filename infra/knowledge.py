"""Knowledge store on pgvector: documents, their chunks and embeddings, searched per collection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

UpsertResult = Literal["added", "replaced", "unchanged"]

POOL_COLLECTION = "_pool"
"""Documents no agent owns yet (`smolit ingest --pool`); a new agent takes over the ones matching its domain.
Agent names start with a letter, so no agent's collection can be called this."""


@dataclass(frozen=True)
class Document:
    """A document to ingest, already chunked and embedded."""

    collection: str
    source: str
    content_hash: str
    chunks: Sequence[str]
    embeddings: np.ndarray
    title: str | None = None
    domain: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    text: str
    score: float
    """Cosine similarity (1 - cosine distance)."""
    source: str
    title: str | None


@dataclass(frozen=True)
class CollectionStats:
    collection: str
    documents: int
    chunks: int


@dataclass(frozen=True)
class StoredDocument:
    """A document's metadata as stored."""

    collection: str
    source: str
    title: str | None
    domain: str | None
    content_hash: str
    metadata: dict[str, Any]
    ingested_at: datetime
    chunks: int


class KnowledgeStore:
    """Documents and chunk embeddings in PostgreSQL; search uses the HNSW cosine index."""

    def __init__(self, pool: ConnectionPool, ef_search: int = 64) -> None:
        self._pool = pool
        self._ef_search = ef_search

    def stored_hash(self, collection: str, source: str) -> str | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT content_hash FROM documents WHERE collection = %s AND source = %s",
                (collection, source),
            ).fetchone()
        return row[0] if row else None

    def upsert(self, doc: Document) -> UpsertResult:
        """Store a document; same content again is a no-op, changed content replaces its chunks."""
        if len(doc.chunks) != len(doc.embeddings):
            raise ValueError("every chunk needs exactly one embedding")
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT id, content_hash FROM documents WHERE collection = %s AND source = %s FOR UPDATE",
                (doc.collection, doc.source),
            ).fetchone()
            if row and row[1] == doc.content_hash:
                return "unchanged"
            if row:
                conn.execute("DELETE FROM documents WHERE id = %s", (row[0],))
            (doc_id,) = conn.execute(
                "INSERT INTO documents (collection, source, title, domain, content_hash, metadata)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (doc.collection, doc.source, doc.title, doc.domain, doc.content_hash, Jsonb(doc.metadata)),
            ).fetchone()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO chunks (document_id, collection, chunk_index, text, embedding)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [
                        (doc_id, doc.collection, i, text, np.asarray(vec, dtype=np.float32))
                        for i, (text, vec) in enumerate(zip(doc.chunks, doc.embeddings, strict=True))
                    ],
                )
        return "replaced" if row else "added"

    def search(
        self,
        collection: str,
        embedding: np.ndarray,
        k: int,
        min_score: float = -1.0,
        *,
        ef_search: int | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        """Top-k chunks of one collection by cosine similarity, best first.

        `exact` bypasses the HNSW index (a scan of the collection): the reference for measuring index recall.
        """
        vec = np.asarray(embedding, dtype=np.float32)
        with self._pool.connection() as conn, conn.transaction():
            # Iterative scans keep HNSW results complete when the collection filter removes candidates.
            conn.execute(
                "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', %s, true),"
                " set_config('enable_indexscan', %s, true)",
                (str(ef_search or self._ef_search), "relaxed_order", "off" if exact else "on"),
            )
            rows = conn.execute(
                "SELECT c.id, c.text, 1 - (c.embedding <=> %s) AS score, d.source, d.title"
                " FROM chunks c JOIN documents d ON d.id = c.document_id"
                " WHERE c.collection = %s ORDER BY c.embedding <=> %s LIMIT %s",
                (vec, collection, vec, k),
            ).fetchall()
        hits = [Hit(chunk_id=r[0], text=r[1], score=float(r[2]), source=r[3], title=r[4]) for r in rows]
        return sorted((h for h in hits if h.score >= min_score), key=lambda h: -h.score)

    def document(self, collection: str, source: str) -> StoredDocument | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT d.collection, d.source, d.title, d.domain, d.content_hash, d.metadata, d.ingested_at,"
                " (SELECT count(*) FROM chunks c WHERE c.document_id = d.id)"
                " FROM documents d WHERE d.collection = %s AND d.source = %s",
                (collection, source),
            ).fetchone()
        return StoredDocument(*row) if row else None

    def metadata_entries(
        self, collection: str, key: str, source: str | None = None
    ) -> list[tuple[str, str | None, Any]]:
        """(source, title, metadata[key]) of the collection's documents whose metadata has `key` (e.g. `entities`),
        by source; only `source` when given."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT source, title, metadata -> %s FROM documents"
                " WHERE collection = %s AND jsonb_exists(metadata, %s) AND (%s::text IS NULL OR source = %s)"
                " ORDER BY source",
                (key, collection, key, source, source),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def pool_sources(self, embedding: np.ndarray, min_score: float, limit: int) -> list[str]:
        """Sources of knowledge-pool documents with a chunk at least `min_score` close to `embedding`, best
        first (at most `limit`)."""
        if limit <= 0:
            return []
        hits = self.search(POOL_COLLECTION, embedding, k=limit * 4, min_score=min_score)
        return list(dict.fromkeys(h.source for h in hits))[:limit]

    def claim(self, sources: Sequence[str], collection: str) -> int:
        """Move knowledge-pool documents into `collection` (a new agent's); returns how many moved. Idempotent:
        documents already moved, or whose source the collection already holds, stay where they are."""
        if not sources:
            return 0
        with self._pool.connection() as conn, conn.transaction():
            moved = conn.execute(
                "UPDATE documents d SET collection = %s WHERE d.collection = %s AND d.source = ANY(%s)"
                " AND NOT EXISTS (SELECT 1 FROM documents o WHERE o.collection = %s AND o.source = d.source)"
                " RETURNING d.id",
                (collection, POOL_COLLECTION, list(sources), collection),
            ).fetchall()
            if moved:
                conn.execute(
                    "UPDATE chunks SET collection = %s WHERE document_id = ANY(%s)", (collection, [r[0] for r in moved])
                )
        return len(moved)

    def delete_collection(self, collection: str) -> int:
        """Remove a collection's documents and chunks; returns the number of documents removed."""
        with self._pool.connection() as conn:
            return conn.execute("DELETE FROM documents WHERE collection = %s", (collection,)).rowcount

    def stats(self) -> list[CollectionStats]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT d.collection, count(DISTINCT d.id), count(c.id) FROM documents d"
                " LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.collection ORDER BY d.collection"
            ).fetchall()
        return [CollectionStats(collection=r[0], documents=r[1], chunks=r[2]) for r in rows]
