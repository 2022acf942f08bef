"""The learner: training examples in, candidate models evaluated, registered and promoted behind a gate."""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from smolit.contracts import Event, RolledBack, RouterModelPromoted, Topic, TrainingExample
from smolit.infra.kafka import Outgoing
from smolit.infra.registry import CHALLENGER, CHAMPION, PREVIOUS, ModelRegistry
from smolit.router.features import AgentFeatures
from smolit.router.model import export, restore

from .dataset import in_holdout, outcome_of
from .rollback import LiveOutcomes, significantly_worse
from .trainer import Outcome, Trainer, new_trainer

log = structlog.get_logger("smolit.learner")
PRODUCER = "learner"


@dataclass(frozen=True)
class LearnerConfig:
    registry_name: str = "smolit-router"
    train_every: int = 200
    train_every_s: float = 60.0
    steps_per_example: int = 1
    hidden: int = 0
    """Width of the network's refinement layer (0: none; `RouterNet`)."""
    refit_iterations: int = 100
    """L-BFGS iterations that fit each candidate in full batch on the buffer (`Trainer.refit`; 0: the running
    average of the online updates is the candidate)."""
    refit_window: int = 10_000
    refit_l2: float = 1e-4
    holdout_share: float = 0.2
    holdout_size: int = 2000
    holdout_rounds: int = 0
    """Candidate evaluations a holdout example serves before it joins training (0: it never does)."""
    min_holdout: int = 50
    fresh_gate: bool = True
    """Compare on user-labelled holdout examples that arrived after the champion was chosen, once there are
    `min_holdout` of them (see `Learner._gate_sample`)."""
    promotion_margin: float = 0.01
    target_precision: float = 0.8
    min_confidence: float = 0.4
    seed: int = 42
    rollback_min_outcomes: int = 50
    rollback_alpha: float = 0.05


class LearnerMetrics(NamedTuple):
    examples: Counter
    candidates: Counter
    promotions: Counter
    rollbacks: Counter
    holdout_accuracy: Gauge
    champion_version: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> LearnerMetrics:
        return cls(
            examples=Counter("smolit_learner_examples_total", "Training examples received", ["use"], registry=registry),
            candidates=Counter("smolit_learner_candidates_total", "Candidate models evaluated", registry=registry),
            promotions=Counter("smolit_learner_promotions_total", "Candidates promoted to champion", registry=registry),
            rollbacks=Counter(
                "smolit_learner_rollbacks_total", "Champions rolled back on live feedback", registry=registry
            ),
            holdout_accuracy=Gauge(
                "smolit_learner_holdout_accuracy_ratio",
                "Holdout routing accuracy of the latest candidate and of the champion",
                ["model"],
                registry=registry,
            ),
            champion_version=Gauge(
                "smolit_learner_champion_version", "Registry version of the champion router model", registry=registry
            ),
        )


class Learner:
    """Learns incrementally from every example; every N examples or T seconds a candidate meets the gate."""

    def __init__(
        self,
        features: AgentFeatures,
        registry: ModelRegistry,
        metrics: LearnerMetrics,
        config: LearnerConfig = LearnerConfig(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self._clock = clock
        self._features = features
        # Oldest first; `_rounds[i]` counts the candidate evaluations `holdout[i]` has served, `_arrived[i]` numbers
        # its arrival; holdout examples numbered from `_champion_since` on arrived after the champion was chosen.
        self.holdout: deque[Outcome] = deque()
        self._rounds: deque[int] = deque()
        self._arrived: deque[int] = deque()
        self._arrivals = 0
        self._champion_since = 0
        self._pending = 0
        self._last_candidate = clock()
        self._lock = threading.Lock()  # the consumer thread and the timer share the trainer
        dim = features.prototypes.shape[1]
        self.trainer = new_trainer(features, dim, hidden=config.hidden, seed=config.seed)
        self.champion: Trainer | None = None
        self.champion_version = registry.version_for(config.registry_name, CHAMPION)
        self.previous_version = registry.version_for(config.registry_name, PREVIOUS)
        self.live = LiveOutcomes()
        if self.champion_version is not None:
            self._warm_start(self.champion_version)

    def warm_up(self) -> None:
        """Pay the optimizer's one-off cost (torch._dynamo import) now, e.g. in a thread while groups are joined."""
        with self._lock:
            trainer = self.trainer
        trainer.warm_up()

    def _warm_start(self, version: str) -> None:
        payload = self.registry.load(self.config.registry_name, version)
        center = payload.get("center")
        if center is not None:
            self._features = self._features.centered_on(np.asarray(center))
        self.trainer = Trainer(restore(payload), self._features, seed=self.config.seed)
        self.champion = self._frozen_copy(self.trainer)
        self.metrics.champion_version.set(float(version))
        log.info("warm start from champion", version=version)

    def _follow_registry(self) -> None:
        """Compare against the champion the registry names now (`smolit models promote|rollback` may move it)."""
        registered = self.registry.version_for(self.config.registry_name, CHAMPION)
        self.previous_version = self.registry.version_for(self.config.registry_name, PREVIOUS)
        if registered == self.champion_version:
            return
        self.champion_version = registered
        self._champion_changed()
        if registered is None:
            self.champion = None
            return
        net = restore(self.registry.load(self.config.registry_name, registered))
        self.champion = Trainer(net, self.trainer.features, seed=self.config.seed)
        self.metrics.champion_version.set(float(registered))
        log.info("champion changed in the registry", version=registered)

    def use_agents(self, features: AgentFeatures) -> None:
        """Train and evaluate over this agent set from now on (agents created at runtime): their outcomes are
        learned from the next example on; learned corrections of known agents are kept."""
        with self._lock:
            features = features.centered_on(self.trainer.features.center)
            self._features = features
            self.trainer.set_features(features)
            if self.champion is not None:
                self.champion.set_features(features)
        log.info("learner agents", agents=features.agents)

    def _frozen_copy(self, trainer: Trainer) -> Trainer:
        return Trainer(copy.deepcopy(trainer.net), trainer.features, seed=self.config.seed)

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        with self._lock:
            return self._handle(events)

    def tick(self) -> list[Outgoing]:
        """Called periodically: a candidate when examples arrived but too few to trigger one by count."""
        with self._lock:
            return self.candidate() if self._due() else []

    def _handle(self, events: Sequence[Event]) -> list[Outgoing]:
        for event in events:
            if not isinstance(event, TrainingExample):
                continue  # other event types on the topic are not ours to learn from
            outcome = outcome_of(event)
            if event.model_version is not None and outcome.good is not None:
                self.live.add(event.model_version, outcome.good)
            if in_holdout(event.event_id, self.config.holdout_share, self.config.seed):
                self.holdout.append(outcome)
                self._rounds.append(0)
                self._arrived.append(self._arrivals)
                self._arrivals += 1
                self.metrics.examples.labels("holdout").inc()
                if len(self.holdout) > self.config.holdout_size:  # a full window: the oldest example trains
                    self._graduate_oldest()
                continue
            self._learn(outcome, "train")
        rolled = self._check_rollback()
        if self._due():
            return rolled + self.candidate()
        return rolled

    def _learn(self, outcome: Outcome, use: str) -> None:
        if self.trainer.add([outcome]):
            self.trainer.train(self.config.steps_per_example)
            self._pending += 1
            self.metrics.examples.labels(use).inc()
        else:
            self.metrics.examples.labels("skipped").inc()

    def _graduate(self) -> None:
        """Holdout examples that served `holdout_rounds` evaluations join training (oldest first), so the final
        model learns from every example while each gate still compares on examples neither model trained on:
        the graduates leave the holdout. It never shrinks below `min_holdout`, so slow traffic can still promote."""
        rounds = self.config.holdout_rounds
        if rounds <= 0:
            return
        for i in range(len(self._rounds)):
            self._rounds[i] += 1
        while len(self._rounds) > self.config.min_holdout and self._rounds[0] >= rounds:
            self._graduate_oldest()

    def _graduate_oldest(self) -> None:
        self._rounds.popleft()
        self._arrived.popleft()
        self._learn(self.holdout.popleft(), "graduated")

    def _champion_changed(self) -> None:
        """Holdout examples from now on are fresh for the new champion (it was not chosen on them)."""
        self._champion_since = self._arrivals

    def _gate_sample(self) -> tuple[list[Outcome], str]:
        """The holdout examples the gate compares candidate and champion on.

        Once the champion was chosen as the best of several candidates on the holdout, its score there is inflated
        (winner's curse): later candidates that are really better rarely clear the margin, and the champion freezes.
        Examples that arrived after it was chosen are free of that bias, and so are their labels when the user named
        the right agent (`preferred_agent`): such a label does not depend on who answered. A thumbs-up alone labels
        the agent that answered, i.e. the champion's own choice on fresh traffic, so rating-only examples keep the whole
        holdout, scored by `Trainer.policy_value`. Falls back to the whole holdout below `min_holdout` fresh ones.
        """
        if self.config.fresh_gate and self.champion is not None:
            known = set(self.trainer.features.agents)  # a name the networks cannot pick is no label (policy_value)
            fresh = [
                o
                for n, o in zip(self._arrived, self.holdout, strict=True)
                if n >= self._champion_since and o.preferred in known
            ]
            if len(fresh) >= self.config.min_holdout:
                return fresh, "fresh"
        return list(self.holdout), "holdout"

    def _check_rollback(self) -> list[Outgoing]:
        """Restore the previous champion when the live outcomes of the current one are significantly worse."""
        current, previous = self.champion_version, self.previous_version
        if current is None or previous is None:
            return []
        new, old = self.live.rate(current), self.live.rate(previous)
        z = significantly_worse(new, old, self.config.rollback_alpha, self.config.rollback_min_outcomes)
        if z is None:
            return []
        reason = (
            f"live positive rate {new[0]}/{new[1]} of version {current} below {old[0]}/{old[1]} of version"
            f" {previous} (z={z:.2f}, alpha={self.config.rollback_alpha})"
        )
        name = self.config.registry_name
        self.registry.set_alias(name, CHAMPION, previous)
        self.registry.set_alias(name, PREVIOUS, current)
        self.champion_version, self.previous_version = previous, current
        self._champion_changed()
        self.champion = Trainer(
            restore(self.registry.load(name, previous)), self.trainer.features, seed=self.config.seed
        )
        self.metrics.rollbacks.inc()
        self.metrics.champion_version.set(float(previous))
        log.warning("champion rolled back", version=previous, from_version=current, reason=reason)
        event = RolledBack(
            correlation_id=uuid.uuid4(),
            producer=PRODUCER,
            registry_name=name,
            version=previous,
            from_version=current,
            reason=reason,
        )
        return [Outgoing(Topic.ROUTER_MODELS, "router", event)]

    def _due(self) -> bool:
        if self._pending == 0:
            return False
        waited = self._clock() - self._last_candidate
        return self._pending >= self.config.train_every or waited >= self.config.train_every_s

    def candidate(self) -> list[Outgoing]:
        """Register the current network as `challenger`; promote it to `champion` if it passes the gate."""
        self._pending = 0
        self._last_candidate = self._clock()
        self._follow_registry()
        started = time.perf_counter()
        holdout = list(self.holdout)
        fitted_net = self.trainer.refit(self.config.refit_window, self.config.refit_iterations, self.config.refit_l2)
        candidate = Trainer(fitted_net, self.trainer.features, seed=self.config.seed)
        mine = candidate.evaluate(holdout)
        sample, which = self._gate_sample()
        champion = self.champion or self._baseline()
        theirs = champion.evaluate(holdout)
        mine_value, their_value = candidate.policy_value(sample), champion.policy_value(sample)
        fitted = candidate.fitted_threshold(holdout, self.config.target_precision)
        threshold = max(fitted, self.config.min_confidence)
        promote, reason = self._gate(mine_value, their_value, len(sample))
        reason = f"{reason} ({which}: {len(sample)} examples)"
        center = self.trainer.features.center  # the router must measure priors exactly as training did
        # Posterior variances from the refit's own outcomes: what Thompson sampling in the router draws from.
        window = list(self.trainer.buffer)[-self.config.refit_window :]
        posterior = self.trainer.posterior_variances(candidate.net, window, self.config.refit_l2)
        extra = {} if posterior is None else {"posterior": posterior.export()}
        payload = export(
            candidate.net, center=None if center is None else center.tolist(), threshold=threshold, **extra
        )
        metrics = mine.as_metrics() | {
            "champion_accuracy": theirs.accuracy if theirs.accuracy is not None else float("nan"),
            "examples_seen": float(self.trainer.seen),
            "holdout_size": float(len(holdout)),
            "gate_examples": float(len(sample)),
            "gate_value": mine_value if mine_value is not None else float("nan"),
            "champion_gate_value": their_value if their_value is not None else float("nan"),
            "threshold": threshold,
            "fitted_threshold": fitted,
            "train_time_s": time.perf_counter() - started,
        }
        params = {
            "lr": self.trainer.optimizer.param_groups[0]["lr"],
            "batch_size": self.trainer.batch_size,
            "hidden": self.trainer.net.hidden,
            "steps_per_example": self.config.steps_per_example,
            "refit_iterations": self.config.refit_iterations,
            "refit_window": self.config.refit_window,
            "refit_l2": self.config.refit_l2,
            "seed": self.config.seed,
            "agents": ",".join(self.trainer.features.agents),
        }
        version = self.registry.log_version(
            self.config.registry_name, payload, params=params, metrics=metrics, tags={"gate": reason}
        ).version
        self.registry.set_alias(self.config.registry_name, CHALLENGER, version)
        self.metrics.candidates.inc()
        if mine.accuracy is not None:
            self.metrics.holdout_accuracy.labels("candidate").set(mine.accuracy)
        if theirs.accuracy is not None:
            self.metrics.holdout_accuracy.labels("champion").set(theirs.accuracy)
        log.info("candidate evaluated", version=version, promoted=promote, reason=reason, **metrics)
        promoted = [self._promote(version, candidate)] if promote else []
        self._graduate()  # after the promotion, which froze the network this holdout evaluated
        return promoted

    def _promote(self, version: str, candidate: Trainer) -> Outgoing:
        previous = self.champion_version
        if previous is not None:
            self.registry.set_alias(self.config.registry_name, PREVIOUS, previous)
            self.previous_version = previous
        self.registry.set_alias(self.config.registry_name, CHAMPION, version)
        self.champion = candidate
        self.champion_version = version
        self._champion_changed()
        self.metrics.promotions.inc()
        self.metrics.champion_version.set(float(version))
        event = RouterModelPromoted(
            correlation_id=uuid.uuid4(),  # a promotion starts its own chain (rollbacks point back at it)
            producer=PRODUCER,
            registry_name=self.config.registry_name,
            version=version,
            previous_version=previous,
        )
        return Outgoing(Topic.ROUTER_MODELS, "router", event)

    def _gate(self, mine: float | None, theirs: float | None, holdout: int) -> tuple[bool, str]:
        if holdout < self.config.min_holdout:
            return False, f"holdout {holdout} < {self.config.min_holdout}"
        if mine is None:
            return False, "no rated or labelled holdout outcomes"
        floor = (theirs or 0.0) + self.config.promotion_margin
        if mine < floor:
            return False, f"value {mine:.4f} < champion {theirs} + margin"
        return True, f"value {mine:.4f} >= champion {theirs} + margin"

    def _baseline(self) -> Trainer:
        """What routes without a champion: the untrained network, which ranks exactly like the similarity scorer."""
        features, dim = self.trainer.features, self.trainer.net.dim
        return new_trainer(features, dim, hidden=self.config.hidden, seed=self.config.seed)
