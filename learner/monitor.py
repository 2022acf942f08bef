"""Flag monitor: training examples and lifecycle events in, `AgentFlagged` / `AgentUnflagged` (+ a challenger) out.

The decision is the pure rule in `flags.py`; this class keeps the per-agent outcome windows and the lifecycle
state, so it flags an agent once per card version (never again while the flag holds) and takes the improvement step
of `improvement.py` on a first flag. The fallback agent is exempt: it takes the requests no specialised agent is
confident about, so its negative rate measures coverage gaps, not its own quality.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog
from prometheus_client import CollectorRegistry, Counter

from smolit.contracts import (
    AgentCard,
    AgentCreated,
    AgentFlagged,
    AgentRetired,
    AgentUnflagged,
    AgentUpdated,
    Event,
    Lifecycle,
    Topic,
    TrainingExample,
)
from smolit.infra.kafka import Outgoing

from .dataset import is_good
from .flags import RULE, FlagRule, OutcomeWindows, Verdict, judge
from .improvement import VersionLog, challenger_card, rollback_card

log = structlog.get_logger("smolit.learner.flags")
PRODUCER = "learner"


@dataclass(frozen=True)
class MonitorConfig:
    rule: FlagRule = field(default_factory=FlagRule)
    exempt: frozenset[str] = field(default_factory=frozenset)
    """Agents never flagged nor pooled as reference (the fallback agent)."""
    default_top_k: int = 4
    """Retrieval top-k of cards that do not set one (the challenger doubles it)."""
    retire_rate: float = 0.6
    """A first flag whose lower bound reaches this also proposes retirement (far worse than acceptable)."""
    challenger_share: float | None = 0.5
    """Share of the agent's conversations the challenger answers next to the current card (`AgentUpdated.share`);
    None: the challenger replaces the card for everyone."""


class FlagMetrics(NamedTuple):
    flags: Counter
    unflags: Counter
    challengers: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> FlagMetrics:
        return cls(
            flags=Counter(
                "smolit_learner_agent_flags_total", "Agents flagged by the learner", ["agent"], registry=registry
            ),
            unflags=Counter(
                "smolit_learner_agent_unflags_total", "Flags the learner cleared", ["agent"], registry=registry
            ),
            challengers=Counter(
                "smolit_learner_agent_challengers_total", "Challenger cards announced", ["agent"], registry=registry
            ),
        )


class FlagMonitor:
    def __init__(
        self,
        cards: Mapping[str, AgentCard],
        config: MonitorConfig,
        metrics: FlagMetrics,
        versions: VersionLog | None = None,
    ) -> None:
        self.config = config
        self.state = Lifecycle(cards=dict(cards))
        self.windows = OutcomeWindows(config.rule.window)
        self._metrics = metrics
        self._versions = versions
        self._replaced: dict[str, AgentCard] = {}
        """Per agent, the card its current version replaced while it was not flagged (the rollback challenger)."""

    def prime(self, events: Iterable[Event]) -> None:
        """Restore the lifecycle state from the topic at start (flags survive a restart; outcome windows do not)."""
        for event in sorted(events, key=lambda e: e.occurred_at):
            self._lifecycle(event)

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        touched: dict[str, TrainingExample] = {}
        for event in events:
            if isinstance(event, TrainingExample):
                if self._tracked(event.agent) and self._current(event) and (good := is_good(event)) is not None:
                    self.windows.add(event.agent, not good)
                    touched[event.agent] = event
            else:
                self._lifecycle(event)
        out: list[Outgoing] = []
        for agent, cause in touched.items():
            out += self._judge(agent, cause)
        return out

    def _current(self, example: TrainingExample) -> bool:
        """Answered by the version being judged (a challenger's champion keeps answering its share meanwhile);
        examples from before versions were recorded count for the current one."""
        return example.card_version is None or example.card_version == self.state.cards[example.agent].version

    def _tracked(self, agent: str) -> bool:
        return agent in self.state.cards and agent not in self.state.retired and agent not in self.config.exempt

    def _lifecycle(self, event: Event) -> None:
        name = event.card.name if isinstance(event, AgentCreated | AgentUpdated) else getattr(event, "agent", "")
        before = self.state.cards.get(name)
        was_flagged = name in self.state.flags
        if not self.state.apply(event):
            return
        if isinstance(event, AgentCreated | AgentRetired):
            self.windows.forget(name)
            self._replaced.pop(name, None)
        elif isinstance(event, AgentUpdated):
            if before is None or before.version != event.card.version:
                self.windows.restart(event.card.name)  # a new version is judged on its own outcomes
                if before is not None and event.share is None and not was_flagged:
                    self._replaced[name] = before
        elif isinstance(event, AgentUnflagged) and event.producer != PRODUCER:
            self.windows.restart(event.agent)  # an operator's decision: gather fresh evidence before re-flagging

    def _judge(self, agent: str, cause: TrainingExample) -> list[Outgoing]:
        rule = self.config.rule
        card = self.state.cards[agent]
        flag = self.state.flags.get(agent)
        stale = flag is not None and flag.card_version not in (None, card.version)
        excluded = self.config.exempt | self.state.retired.keys()
        counts = (self.windows.recent(agent), self.windows.others(agent, excluded), self.windows.history(agent))
        if flag is not None:
            verdict = judge(rule, *counts, flagged=True)
            if verdict.action == "unflag":
                return self._unflag(agent, verdict, cause)
            if not stale:
                return []
        verdict = judge(rule, *counts, flagged=False)
        if verdict.action != "flag":
            return []
        return self._flag(card, verdict, cause, first=flag is None)

    def _flag(self, card: AgentCard, verdict: Verdict, cause: TrainingExample, *, first: bool) -> list[Outgoing]:
        rollback = rollback_card(card, self._replaced.get(card.name)) if first else None
        challenger = rollback or (challenger_card(card, self.config.default_top_k) if first else None)
        actions: list[str] = ["challenger"] if challenger else []
        if not first or challenger is None or verdict.evidence["lower_bound"] >= self.config.retire_rate:
            actions.append("retire")
        reason = verdict.reason if first else f"challenger version {card.version} still bad: {verdict.reason}"
        flag = AgentFlagged(
            correlation_id=uuid.uuid4(),  # a flag starts its own chain; the example that tipped it is the cause
            causation_id=cause.event_id,
            producer=PRODUCER,
            agent=card.name,
            reason=reason,
            evidence=verdict.evidence,
            rule=RULE,
            card_version=card.version,
            proposed_actions=tuple(actions),  # type: ignore[arg-type]
        )
        self.state.apply(flag)
        self._metrics.flags.labels(card.name).inc()
        log.warning("agent flagged", agent=card.name, version=card.version, actions=actions, reason=reason)
        self._record(card, "flagged", verdict.evidence)
        out = [Outgoing(Topic.AGENT_LIFECYCLE, card.name, flag)]
        if challenger is not None:
            update = flag.caused(AgentUpdated, producer=PRODUCER, card=challenger, share=self.config.challenger_share)
            self._lifecycle(update)
            self._metrics.challengers.labels(card.name).inc()
            kind = f"rollback to version {self._replaced[card.name].version}'s settings" if rollback else "challenger"
            self._record(challenger, f"{kind} of version {card.version}", {})
            out.append(Outgoing(Topic.AGENT_LIFECYCLE, card.name, update))
        return out

    def _unflag(self, agent: str, verdict: Verdict, cause: TrainingExample) -> list[Outgoing]:
        """Clear the flag; a challenger on trial whose own outcomes cleared it is promoted (answers everyone)."""
        challenger = self.state.challengers.get(agent)
        event = AgentUnflagged(
            correlation_id=uuid.uuid4(),
            causation_id=cause.event_id,
            producer=PRODUCER,
            agent=agent,
            reason=verdict.reason,
            evidence=verdict.evidence,
        )
        self.state.apply(event)
        self._metrics.unflags.labels(agent).inc()
        log.info("agent unflagged", agent=agent, reason=verdict.reason)
        out = [Outgoing(Topic.AGENT_LIFECYCLE, agent, event)]
        if challenger is not None:
            promoted = event.caused(AgentUpdated, producer=PRODUCER, card=challenger.card)
            self._lifecycle(promoted)
            log.info("challenger promoted", agent=agent, version=challenger.card.version)
            out.append(Outgoing(Topic.AGENT_LIFECYCLE, agent, promoted))
        return out

    def _record(self, card: AgentCard, reason: str, metrics: Mapping[str, float]) -> None:
        """Best effort: the lifecycle event is the record; a registry outage must not lose or repeat the flag."""
        if self._versions is None:
            return
        try:
            self._versions.record(card, reason=reason, metrics=metrics)
        except Exception:
            log.exception("could not record the agent version in MLflow", agent=card.name, version=card.version)
