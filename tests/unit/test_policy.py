"""Routing decision policy and similarity scoring."""

from __future__ import annotations

import numpy as np
import pytest

from smolit.contracts import AgentCard
from smolit.router import NoAgents, SimilarityScorer, decide


def test_best_agent_wins_above_threshold() -> None:
    """The highest-scoring agent takes the request when it clears the threshold."""
    d = decide({"finance": 0.6, "legal": 0.4, "general": 0.3}, fallback="general", threshold=0.3)
    assert (d.agent, d.low_confidence) == ("finance", False)


def test_below_threshold_goes_to_fallback() -> None:
    """When no specialised agent is confident, the fallback answers and the request is flagged."""
    d = decide({"finance": 0.2, "legal": 0.1, "general": 0.15}, fallback="general", threshold=0.3)
    assert (d.agent, d.low_confidence, d.score) == ("general", True, 0.15)


def test_fallback_can_win_outright() -> None:
    """A request that best matches the fallback agent is not low-confidence."""
    d = decide({"finance": 0.2, "general": 0.5}, fallback="general", threshold=0.3)
    assert (d.agent, d.low_confidence) == ("general", False)


def test_fallback_winning_below_threshold_is_low_confidence() -> None:
    """A request the fallback agent wins without reaching the threshold fits no agent: it is flagged."""
    d = decide({"finance": 0.1, "general": 0.2}, fallback="general", threshold=0.3)
    assert (d.agent, d.low_confidence) == ("general", True)


def test_requested_agent_overrides_scores() -> None:
    """Naming an existing agent bypasses scoring."""
    d = decide({"finance": 0.9, "legal": 0.1}, fallback="general", threshold=0.3, requested="legal")
    assert d.agent == "legal"


def test_ties_break_by_name() -> None:
    """Equal scores give the same answer every time."""
    assert decide({"b": 0.5, "a": 0.5}, fallback="z", threshold=0.1).agent == "a"


def test_no_agents_is_an_error() -> None:
    """Routing with no agents raises instead of inventing one."""
    with pytest.raises(NoAgents):
        decide({}, fallback="general", threshold=0.3)


class _TableEmbedder:
    """Embeds known strings to fixed unit vectors (pure-logic fake)."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.asarray([self.table[t] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_scorer_takes_each_agents_best_prototype() -> None:
    """An agent's score is its most similar prototype (description or example)."""
    emb = _TableEmbedder({"money": [1, 0, 0], "cheques": [0.8, 0.6, 0], "law": [0, 0, 1], "contracts": [0, 0.6, 0.8]})
    cards = {
        "finance": AgentCard(name="finance", description="money", examples=("cheques",)),
        "legal": AgentCard(name="legal", description="law", examples=("contracts",)),
    }
    scorer = SimilarityScorer(cards, emb)
    scores = scorer.score_dicts(np.asarray([[0.0, 1.0, 0.0]], dtype=np.float32))[0]
    assert scores == pytest.approx({"finance": 0.6, "legal": 0.6})
    scores = scorer.score_dicts(np.asarray([[1.0, 0.0, 0.0]], dtype=np.float32))[0]
    assert scores == pytest.approx({"finance": 1.0, "legal": 0.0})
