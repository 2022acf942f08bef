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
        self._posterior = _posterior_over(payload.get("posterior"), self.agents, self.net.dim)

    @property
    def has_posterior(self) -> bool:
        """Whether the model carries posterior variances (models registered before Thompson sampling do not)."""
        return self._posterior is not None

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

    @torch.no_grad()
    def logit_posterior(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) request embeddings -> (n, agents) mean logits and their variances under the model's diagonal
        posterior (`v_k = sum_j h(q)_j^2 var(delta_kj) + var(b_k)`). Requires `has_posterior`."""
        if self._posterior is None:
            raise ValueError("this routing model has no posterior variances")
        delta_var, bias_var = self._posterior
        x = np.asarray(embeddings, dtype=np.float32)
        queries = torch.from_numpy(x)
        priors = torch.from_numpy(self.features.priors(x))
        logits = self.net(queries, self._cards, priors, self.agents).double().numpy()
        refined = queries if self.net.refine is None else queries + self.net.refine(queries)
        if self.net.scaled_deltas:
            refined = refined * self.net.log_temperature.exp()
        return logits, refined.double().pow(2).numpy() @ delta_var.T + bias_var


def _posterior_over(posterior: object, agents: list[str], dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(agents, dim) delta variances and (agents,) bias variances from a payload's `posterior` entry; agents the
    model was not fitted on get its prior variance. None when the payload has none."""
    if not isinstance(posterior, dict):
        return None
    prior = float(posterior["prior_var"])
    deltas, biases = posterior.get("delta_var", {}), posterior.get("bias_var", {})
    delta_var = np.full((len(agents), dim), prior, dtype=np.float64)
    bias_var = np.full(len(agents), prior, dtype=np.float64)
    for i, agent in enumerate(agents):
        if agent in deltas:
            delta_var[i] = np.asarray(deltas[agent], dtype=np.float64)
        if agent in biases:
            bias_var[i] = float(biases[agent])
    return delta_var, bias_var
