"""Similarity scoring: a request embedding against each agent card's description and example requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from smolit.contracts import AgentCard


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class SimilarityScorer:
    """Score = highest cosine similarity between the request and any of the agent's prototypes.

    Prototypes are the card's description and example requests, embedded once when the scorer is built.
    """

    version = "similarity-v1"

    def __init__(self, cards: Mapping[str, AgentCard], embedder: TextEmbedder) -> None:
        self.agents: list[str] = sorted(cards)
        texts: list[str] = []
        owner: list[int] = []
        for idx, name in enumerate(self.agents):
            card = cards[name]
            for text in (card.description, *card.examples):
                texts.append(text)
                owner.append(idx)
        self._prototypes = np.asarray(embedder.embed(texts), dtype=np.float32)
        self._owner = np.asarray(owner)
        # Column ranges per agent, so a reduceat gives each agent's best prototype in one call.
        self._starts = np.searchsorted(self._owner, np.arange(len(self.agents)))

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) normalised request embeddings -> (n, agents) scores in [-1, 1]."""
        if embeddings.shape[0] == 0:
            return np.zeros((0, len(self.agents)), dtype=np.float32)
        sims = embeddings.astype(np.float32) @ self._prototypes.T
        return np.maximum.reduceat(sims, self._starts, axis=1)

    def score_dicts(self, embeddings: np.ndarray) -> list[dict[str, float]]:
        return [
            {agent: round(float(s), 6) for agent, s in zip(self.agents, row, strict=True)}
            for row in self.score(embeddings)
        ]
