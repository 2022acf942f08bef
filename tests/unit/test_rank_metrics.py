"""Ranking metrics of the retrieval benchmark, checked against hand-computed values."""

from __future__ import annotations

import pytest

from smolit.infra.knowledge import Hit
from smolit.retrieval_bench import documents_ranked, rank_metrics


def test_recall_and_mrr_match_a_hand_computed_example() -> None:
    """Gold at rank 1, rank 3, rank 7 and missing: recall@1 1/4, @5 2/4, @10 3/4, MRR (1 + 1/3 + 1/7) / 4."""
    rankings = [
        ["a", "x"],
        ["x", "y", "b"],
        ["1", "2", "3", "4", "5", "6", "c", "8"],
        ["p", "q"],
    ]
    got = rank_metrics(rankings, ["a", "b", "c", "d"])
    assert got == {
        "recall@1": 0.25,
        "recall@5": 0.5,
        "recall@10": 0.75,
        "mrr@10": round((1 + 1 / 3 + 1 / 7) / 4, 4),
    }


def test_gold_beyond_the_deepest_cutoff_does_not_count() -> None:
    """A relevant document at rank 11 contributes neither to recall@10 nor to MRR@10."""
    ranking = [str(i) for i in range(10)] + ["gold"]
    assert rank_metrics([ranking], ["gold"]) == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0}


def test_mismatched_inputs_are_rejected() -> None:
    """One ranking per question is required."""
    with pytest.raises(ValueError):
        rank_metrics([["a"]], ["a", "b"])


def test_documents_are_ranked_by_their_best_chunk() -> None:
    """Several chunks of one document collapse to its first (best) position."""
    hits = [Hit(i, "t", 1.0 - i / 10, src, None) for i, src in enumerate(["d1", "d2", "d1", "d3", "d2"])]
    assert documents_ranked(hits) == ["d1", "d2", "d3"]
