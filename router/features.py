"""Agent features shared by the similarity scorer and the routing network (numpy only, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from smolit.contracts import AgentCard


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class AgentFeatures:
    """Every agent's prototypes (description + example requests, embedded once) and its card vector."""

    agents: tuple[str, ...]
    prototypes: np.ndarray
    """(p, dim) normalised prototype embeddings, grouped by agent in `agents` order."""
    starts: np.ndarray
    """Index of each agent's first prototype row."""

    @classmethod
    def from_cards(cls, cards: Mapping[str, AgentCard], embedder: TextEmbedder) -> AgentFeatures:
        agents = tuple(sorted(cards))
        texts = [text for name in agents for text in (cards[name].description, *cards[name].examples)]
        counts = [1 + len(cards[name].examples) for name in agents]
        return cls.from_vectors(agents, np.asarray(embedder.embed(texts), dtype=np.float32), counts)

    @classmethod
    def from_vectors(cls, agents: Sequence[str], prototypes: np.ndarray, counts: Sequence[int]) -> AgentFeatures:
        if len(agents) != len(counts) or sum(counts) != len(prototypes) or min(counts, default=1) < 1:
            raise ValueError("every agent needs at least one prototype, and counts must cover all prototype rows")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(tuple(agents), np.asarray(prototypes, dtype=np.float32), starts)

    def priors(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) normalised request embeddings -> (n, agents) best cosine to each agent's prototypes."""
        if embeddings.shape[0] == 0:
            return np.zeros((0, len(self.agents)), dtype=np.float32)
        sims = np.asarray(embeddings, dtype=np.float32) @ self.prototypes.T
        return np.maximum.reduceat(sims, self.starts, axis=1)

    def card_vectors(self) -> np.ndarray:
        """(agents, dim) normalised mean of each agent's prototypes."""
        means = np.add.reduceat(self.prototypes, self.starts, axis=0)
        return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
