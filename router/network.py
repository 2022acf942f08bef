"""Routing with a trained `RouterNet` from the registry: probabilities of a good outcome per agent."""

from __future__ import annotations

import numpy as np
import torch

from .features import AgentFeatures
from .model import restore


class NetworkScorer:
    def __init__(self, payload: dict[str, object], features: AgentFeatures, version: str) -> None:
        self.net = restore(payload)
        self._payload = payload
        center = payload.get("center")
        self.features = features.centered_on(None if center is None else np.asarray(center, dtype=np.float32))
        self.agents = list(self.features.agents)
        self.threshold = float(payload.get("threshold", 0.5))  # type: ignore[arg-type]
        self.version = version
        self._cards = torch.from_numpy(self.features.card_vectors())

    def with_features(self, features: AgentFeatures) -> NetworkScorer:
        """The same model over another agent set (agents created at runtime are scored from their cards)."""
        return NetworkScorer(self._payload, features, self.version)

    @torch.no_grad()
    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) request embeddings -> (n, agents) probability of a good outcome."""
        if embeddings.shape[0] == 0:
            return np.zeros((0, len(self.agents)), dtype=np.float32)
        x = np.asarray(embeddings, dtype=np.float32)
        priors = torch.from_numpy(self.features.priors(x))
        return torch.sigmoid(self.net(torch.from_numpy(x), self._cards, priors, self.agents)).numpy()
