"""Knowledge ingestion: text in, chunks + embeddings + metadata stored; unchanged content is skipped."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from smolit.infra.knowledge import Document, KnowledgeStore, UpsertResult

from .chunking import chunk_text

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst"})


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class RawDocument:
    source: str
    text: str
    title: str | None = None
    metadata: dict[str, Any] | None = None
    extra_chunks: tuple[str, ...] = ()
    """Chunks stored after the text's own, e.g. the fields the `entities` step extracted (searchable, citable)."""

    @property
    def digest(self) -> str:
        """Content hash of what gets stored: the text, and the extra chunks when there are any."""
        return content_hash("\n\n".join((self.text, *self.extra_chunks)))


@dataclass(frozen=True)
class FileError:
    """A file (or one JSONL line) that could not be turned into a document."""

    source: str
    reason: str
    skipped: bool = False
    """True for files left out on purpose (unsupported type inside a folder); not a failure."""


@dataclass
class IngestReport:
    """What happened to every input: added / replaced / unchanged, or failed / skipped with a reason."""

    outcomes: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(1 for outcome in self.outcomes.values() if outcome == "failed")

    @property
    def stored(self) -> int:
        """Documents now present in the store (new, replaced or already there)."""
        return sum(1 for o in self.outcomes.values() if o in ("added", "replaced", "unchanged"))


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Ingestor:
    """Chunks, embeds and stores documents for one collection at a time."""

    def __init__(self, store: KnowledgeStore, embedder: TextEmbedder, max_chars: int = 900) -> None:
        self._store = store
        self._embedder = embedder
        self._max_chars = max_chars

    def ingest(self, collection: str, doc: RawDocument, domain: str | None = None) -> UpsertResult:
        report = self.ingest_report(collection, [doc], domain)
        if doc.source in report.errors:
            raise ValueError(f"{doc.source}: {report.errors[doc.source]}")
        return report.outcomes[doc.source]  # type: ignore[return-value]

    def ingest_all(
        self,
        collection: str,
        docs: Iterable[RawDocument | FileError],
        domain: str | None = None,
        batch_docs: int = 64,
        on_progress: Callable[[int], None] | None = None,
    ) -> Counter[str]:
        """Outcome counts of `ingest_report` (added / replaced / unchanged / failed / skipped)."""
        return self.ingest_report(collection, docs, domain, batch_docs, on_progress).counts

    def ingest_report(
        self,
        collection: str,
        docs: Iterable[RawDocument | FileError],
        domain: str | None = None,
        batch_docs: int = 64,
        on_progress: Callable[[int], None] | None = None,
    ) -> IngestReport:
        """Ingest documents, embedding the chunks of up to `batch_docs` documents in one call.

        Reader errors passed in and documents without text are recorded in the report; the rest continues.
        """
        report = IngestReport()
        batch: list[tuple[RawDocument, str, list[str]]] = []

        def done(n: int = 1) -> None:
            if on_progress:
                on_progress(n)

        def flush() -> None:
            texts = [chunk for _, _, chunks in batch for chunk in chunks]
            vectors = self._embedder.embed(texts)
            offset = 0
            for doc, digest, chunks in batch:
                report.outcomes[doc.source] = self._store.upsert(
                    _document(collection, doc, digest, chunks, vectors[offset : offset + len(chunks)], domain)
                )
                offset += len(chunks)
            done(len(batch))
            batch.clear()

        for doc in docs:
            if isinstance(doc, FileError):
                report.outcomes[doc.source] = "skipped" if doc.skipped else "failed"
                report.errors[doc.source] = doc.reason
                done()
                continue
            digest = doc.digest
            if self._store.stored_hash(collection, doc.source) == digest:
                report.outcomes[doc.source] = "unchanged"  # checked before embedding: a re-ingest costs a query
                done()
                continue
            chunks = chunk_text(doc.text, self._max_chars)
            if chunks:
                chunks += list(doc.extra_chunks)
            if not chunks:
                report.outcomes[doc.source] = "failed"
                report.errors[doc.source] = "empty document (no text)"
                done()
                continue
            batch.append((doc, digest, chunks))
            if len(batch) >= batch_docs:
                flush()
        if batch:
            flush()
        return report


def _document(
    collection: str, doc: RawDocument, digest: str, chunks: list[str], vectors: np.ndarray, domain: str | None
) -> Document:
    return Document(
        collection=collection,
        source=doc.source,
        content_hash=digest,
        chunks=chunks,
        embeddings=vectors,
        title=doc.title,
        domain=domain or collection,
        metadata=doc.metadata or {},
    )


def read_text_files(path: Path) -> Iterator[RawDocument]:
    """A text/markdown file, or every such file under a folder (sorted), as raw documents."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.suffix.lower() not in TEXT_SUFFIXES:
            if path.is_file():
                raise ValueError(f"{file}: unsupported file type {file.suffix!r} (use {sorted(TEXT_SUFFIXES)})")
            continue
        text = file.read_text(encoding="utf-8", errors="replace")
        title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.strip()), file.stem)
        yield RawDocument(source=str(file.resolve()), text=text, title=title[:200], metadata={"path": str(file)})
