"""Similarity scoring: a request embedding against each agent card's description and example requests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from smolit.contracts import AgentCard

from .features import AgentFeatures, TextEmbedder


class SimilarityScorer:
    """Score = highest cosine similarity between the request and any of the agent's prototypes.

    Prototypes are the card's description and example requests, embedded once when the scorer is built.
    """

    version = "similarity-v1"

    def __init__(self, cards: Mapping[str, AgentCard], embedder: TextEmbedder) -> None:
        self.features = AgentFeatures.from_cards(cards, embedder)
        self.agents: list[str] = list(self.features.agents)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) normalised request embeddings -> (n, agents) scores in [-1, 1]."""
        return self.features.priors(embeddings)

    def score_dicts(self, embeddings: np.ndarray) -> list[dict[str, float]]:
        return [
            {agent: round(float(s), 6) for agent, s in zip(self.agents, row, strict=True)}
            for row in self.score(embeddings)
        ]
