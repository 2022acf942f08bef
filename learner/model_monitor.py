"""Live model monitor: pipeline models (OCR, sentiment, ...) whose live outcomes drop are rolled back.

Two kinds of live outcome per (registered model, version):
- **validation**: `ModelOutcomeRecorded` events of a version the model manager resolved (plausibility and output
  checks of each attachment reading);
- **feedback**: a user's own rating (`FeedbackGiven`, not inferred) of an answer, joined by request id to the
  models that served it (`AnswerProduced.models` whose output was used): a thumbs-up or 4-5 stars is good for every
  such model, a thumbs-down or 1-2 stars bad.

The champion and the version it replaced come from the router-models topic (`ModelPromoted`, `RolledBack`). When the
champion's good-outcome rate is significantly below the previous version's (the router's rule in `rollback.py`:
minimum outcomes on both sides, one-sided two-proportion z-test), the registry aliases swap (`previous` becomes
`champion` again) and a `RolledBack` with the evidence goes out; model managers in agents and gateways swap back, as
for `smolit models rollback NAME`. The registry is checked first, so a rollback already made (by an operator or
another learner instance) is not repeated. A version rolled back is not judged again unless it is promoted again,
which starts its live count afresh. Counts live in memory: after a restart they build up again from new outcomes.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol
from uuid import UUID

import structlog
from prometheus_client import CollectorRegistry, Counter

from smolit.contracts import (
    AnswerProduced,
    Event,
    FeedbackGiven,
    ModelOutcomeRecorded,
    ModelPromoted,
    RolledBack,
    Topic,
)
from smolit.infra.kafka import Outgoing

from .rollback import LiveOutcomes, significantly_worse

log = structlog.get_logger("smolit.learner.models")
PRODUCER = "learner"
CHAMPION, PREVIOUS = "champion", "previous"


class Aliases(Protocol):
    """What the monitor needs from the model registry (`smolit.infra.registry.ModelRegistry` implements it)."""

    def version_for(self, name: str, alias: str) -> str | None: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...


@dataclass(frozen=True)
class ModelMonitorConfig:
    min_outcomes: int = 30
    """Judged outcomes both the champion and the previous version need before a decision."""
    alpha: float = 0.05
    ignore: frozenset[str] = frozenset()
    """Registered models judged elsewhere (the router network: the learner's own rollback rule)."""
    remember: int = 50_000
    """Answers (and early feedback) kept for the feedback join; older ones are forgotten first."""


class ModelMonitorMetrics(NamedTuple):
    outcomes: Counter
    rollbacks: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ModelMonitorMetrics:
        return cls(
            outcomes=Counter(
                "smolit_learner_model_outcomes_total",
                "Live outcomes of pipeline model versions, per source (validation, feedback) and outcome",
                ["model", "version", "source", "outcome"],
                registry=registry,
            ),
            rollbacks=Counter(
                "smolit_learner_model_rollbacks_total",
                "Pipeline model champions rolled back on live outcomes",
                ["model"],
                registry=registry,
            ),
        )


@dataclass
class _Champion:
    current: str
    previous: str | None


@dataclass
class ModelMonitor:
    registry: Callable[[], Aliases]
    """Opened at the first rollback (MLflow takes seconds to open)."""
    config: ModelMonitorConfig = field(default_factory=ModelMonitorConfig)
    metrics: ModelMonitorMetrics | None = None
    champions: dict[str, _Champion] = field(default_factory=dict)
    live: dict[str, LiveOutcomes] = field(default_factory=dict)
    _answers: OrderedDict[UUID, tuple[tuple[str, str], ...]] = field(default_factory=OrderedDict)
    _early: OrderedDict[UUID, list[bool]] = field(default_factory=OrderedDict)
    """Feedback whose answer has not been seen yet (the topics are read side by side)."""
    _rated: OrderedDict[tuple[UUID, str], None] = field(default_factory=OrderedDict)
    """(request, user) already counted: a user who changes a rating is counted once."""
    _rolled: set[tuple[str, str]] = field(default_factory=set)
    _aliases: Aliases | None = None

    def prime(self, events: Iterable[Event]) -> None:
        """Who is champion now, from a full read of the router-models topic at start."""
        for event in sorted(events, key=lambda e: e.occurred_at):
            self._promotion(event)

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        touched: dict[str, Event] = {}
        for event in events:
            if isinstance(event, ModelPromoted | RolledBack):
                self._promotion(event)
            elif isinstance(event, ModelOutcomeRecorded):
                if event.version:
                    self._add(event.model, event.version, event.success, "validation")
                    touched[event.model] = event
            elif isinstance(event, AnswerProduced):
                served = tuple((m.name, m.version) for m in event.models if m.error is None and m.version)
                if served:
                    self._remember(self._answers, event.correlation_id, served)
                    for good in self._early.pop(event.correlation_id, []):
                        touched |= self._credit(served, good, event)
            elif isinstance(event, FeedbackGiven):
                touched |= self._feedback(event)
        out: list[Outgoing] = []
        for name, cause in touched.items():
            out += self._judge(name, cause)
        return out

    def _feedback(self, event: FeedbackGiven) -> dict[str, Event]:
        if event.inferred_by is not None or event.sentiment == "neutral":
            return {}  # an inferred rating is the sentiment model's guess, not the user's judgement
        key = (event.correlation_id, event.user or "")
        if key in self._rated:
            return {}
        self._remember(self._rated, key, None)
        good = event.sentiment == "positive"
        served = self._answers.get(event.correlation_id)
        if served is None:
            self._remember(self._early, event.correlation_id, [*self._early.get(event.correlation_id, []), good])
            return {}
        return self._credit(served, good, event)

    def _credit(self, served: tuple[tuple[str, str], ...], good: bool, cause: Event) -> dict[str, Event]:
        for name, version in served:
            self._add(name, version, good, "feedback")
        return {name: cause for name, _ in served}

    def _add(self, name: str, version: str, good: bool, source: str) -> None:
        if name in self.config.ignore:
            return
        self.live.setdefault(name, LiveOutcomes()).add(version, good)
        if self.metrics is not None:
            self.metrics.outcomes.labels(name, version, source, "good" if good else "bad").inc()

    def _remember(self, cache: OrderedDict, key: object, value: object) -> None:  # type: ignore[type-arg]
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.config.remember:
            cache.popitem(last=False)

    def _promotion(self, event: Event) -> None:
        if isinstance(event, ModelPromoted) and event.alias == CHAMPION:
            if (event.registry_name, event.version) in self._rolled:  # promoted again: a fresh trial
                self._rolled.discard((event.registry_name, event.version))
                self.live.get(event.registry_name, LiveOutcomes()).counts.pop(event.version, None)
            self.champions[event.registry_name] = _Champion(event.version, event.previous_version)
        elif isinstance(event, RolledBack):
            self.champions[event.registry_name] = _Champion(event.version, event.from_version)
            self._rolled.add((event.registry_name, event.from_version))

    def _judge(self, name: str, cause: Event) -> list[Outgoing]:
        champion = self.champions.get(name)
        if name in self.config.ignore or champion is None or champion.previous is None:
            return []
        current, previous = champion.current, champion.previous
        if (name, current) in self._rolled:
            return []
        live = self.live.get(name, LiveOutcomes())
        new, old = live.rate(current), live.rate(previous)
        z = significantly_worse(new, old, self.config.alpha, self.config.min_outcomes)
        if z is None:
            return []
        try:
            aliases = self._registry()
            registered = (aliases.version_for(name, CHAMPION), aliases.version_for(name, PREVIOUS))
            if registered != (current, previous):  # moved meanwhile (operator, another instance): follow it
                log.info("model aliases moved; no rollback", model=name, registered=registered, seen=current)
                if registered[0] is not None:
                    self.champions[name] = _Champion(registered[0], registered[1])
                return []
            aliases.set_alias(name, CHAMPION, previous)
            aliases.set_alias(name, PREVIOUS, current)
        except Exception:  # registry down: the next outcome of this model judges again (counts are kept)
            log.exception("model rollback postponed: registry not usable", model=name)
            return []
        reason = (
            f"live good-outcome rate {new[0]}/{new[1]} of version {current} below {old[0]}/{old[1]} of version"
            f" {previous} (z={z:.2f}, alpha={self.config.alpha})"
        )
        event = RolledBack(
            correlation_id=uuid.uuid4(),  # a rollback starts its own chain; the outcome that tipped it is the cause
            causation_id=cause.event_id,
            producer=PRODUCER,
            registry_name=name,
            version=previous,
            from_version=current,
            reason=reason,
            evidence={
                "champion_good": float(new[0]),
                "champion_judged": float(new[1]),
                "previous_good": float(old[0]),
                "previous_judged": float(old[1]),
                "z": round(z, 4),
                "alpha": self.config.alpha,
                "min_outcomes": float(self.config.min_outcomes),
            },
        )
        self._promotion(event)
        if self.metrics is not None:
            self.metrics.rollbacks.labels(name).inc()
        log.warning("model rolled back", model=name, version=previous, from_version=current, reason=reason)
        return [Outgoing(Topic.ROUTER_MODELS, name, event)]

    def _registry(self) -> Aliases:
        if self._aliases is None:
            self._aliases = self.registry()
        return self._aliases
