"""Per-agent window aggregation, pure: facts in, mergeable panes, `AgentMetricsWindow` events out.

A *fact* is the small dict the router stage derives from one input event (a decision, an answer, a failure, a
feedback, a subquery) for one agent. Facts land in *panes*: fixed event-time slices whose length divides both the
tumbling size and the hopping step. A tumbling window is the merge of its panes, and so is each hopping window, so
one fact updates one pane however many hopping windows overlap it. Everything in a pane merges exactly (counts,
sums, a log-bucket latency histogram), which is what makes percentiles over a 15-minute window cheap and exact to
the histogram's resolution (±1 % relative).

Exactly-once in effect: a pane remembers, per source topic-partition, the highest offset it has applied, and the
ids of facts that have no single source offset (feedback attributed by the join, timeouts). A fact replayed after
a crash is therefore recognised and skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from smolit.contracts import AgentMetricsWindow

Fact = dict[str, Any]
"""Wire form of a fact: `a` agent, `t` event time (epoch s), `s` [topic, partition, offset] or `id`, then values."""

UNKNOWN_AGENT = "unknown"
WindowKind = Literal["tumbling", "hopping"]
_LOG_BASE = math.log(1.02)  # histogram bucket width: 2 % → percentiles within ±1 %
_NAMESPACE = uuid5(NAMESPACE_URL, "https://smolit.dev/streams")


def is_negative(rating: int) -> bool:
    """Thumbs down (-1), zero, and 2 stars are negative. 1 reads as thumbs up: the scales overlap there."""
    return rating <= 0 or rating == 2


def _bucket(latency_ms: float) -> int:
    return math.floor(math.log(max(latency_ms, 0.01)) / _LOG_BASE)


def _bucket_value(bucket: int) -> float:
    """Geometric middle of a bucket."""
    return math.exp((bucket + 0.5) * _LOG_BASE)


@dataclass
class Pane:
    """Mergeable aggregate of the facts of one agent over one event-time slice."""

    requests: int = 0
    answers: int = 0
    failures: int = 0
    feedback_count: int = 0
    rating_sum: float = 0.0
    negatives: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    subqueries_sent: int = 0
    subqueries_received: int = 0
    score_sum: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)
    """Histogram: log bucket → count."""
    applied: dict[str, int] = field(default_factory=dict)
    """Source `topic:partition` → highest offset applied (replay detection)."""
    ids: list[str] = field(default_factory=list)
    """Ids of applied facts that have no source offset."""
    _id_set: set[str] = field(default_factory=set, repr=False, compare=False)
    """`ids` as a set, for the membership test (rebuilt when `ids` was filled elsewhere)."""

    def add(self, fact: Fact) -> bool:
        """Apply a fact once; False when it was applied before (a replay)."""
        if not self._first_time(fact):
            return False
        self.requests += fact.get("req", 0)
        self.score_sum += fact.get("score", 0.0)
        self.answers += fact.get("ans", 0)
        if (lat := fact.get("lat")) is not None:
            b = _bucket(lat)
            self.latency[b] = self.latency.get(b, 0) + 1
        self.tokens += fact.get("tok", 0)
        self.cost_usd += fact.get("cost", 0.0)
        self.cache_hits += fact.get("hit", 0)
        self.failures += fact.get("fail", 0)
        if (rating := fact.get("fb")) is not None:
            self.feedback_count += 1
            self.rating_sum += rating
            self.negatives += is_negative(rating)
        self.subqueries_sent += fact.get("sqs", 0)
        self.subqueries_received += fact.get("sqr", 0)
        return True

    def _first_time(self, fact: Fact) -> bool:
        if (source := fact.get("s")) is not None:
            topic, partition, offset = source
            tp = f"{topic}:{partition}"
            if offset <= self.applied.get(tp, -1):
                return False
            self.applied[tp] = offset
            return True
        fact_id = fact["id"]
        if len(self._id_set) != len(self.ids):
            self._id_set = set(self.ids)
        if fact_id in self._id_set:
            return False
        self.ids.append(fact_id)
        self._id_set.add(fact_id)
        return True

    def merge(self, other: Pane) -> Pane:
        """A new pane holding both (replay bookkeeping is not merged: merged panes are for output only)."""
        latency = dict(self.latency)
        for b, n in other.latency.items():
            latency[b] = latency.get(b, 0) + n
        return Pane(
            requests=self.requests + other.requests,
            answers=self.answers + other.answers,
            failures=self.failures + other.failures,
            feedback_count=self.feedback_count + other.feedback_count,
            rating_sum=self.rating_sum + other.rating_sum,
            negatives=self.negatives + other.negatives,
            tokens=self.tokens + other.tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            cache_hits=self.cache_hits + other.cache_hits,
            subqueries_sent=self.subqueries_sent + other.subqueries_sent,
            subqueries_received=self.subqueries_received + other.subqueries_received,
            score_sum=self.score_sum + other.score_sum,
            latency=latency,
        )

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile of the latencies, to the bucket's resolution."""
        total = sum(self.latency.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen >= rank:
                return round(_bucket_value(b), 3)
        raise AssertionError("unreachable")  # pragma: no cover

    def to_event(self, agent: str, kind: WindowKind, start: float, end: float) -> AgentMetricsWindow:
        """The window as an event whose id depends only on agent, kind and bounds (downstream dedupes by it)."""
        return AgentMetricsWindow(
            event_id=window_event_id(agent, kind, start, end),
            occurred_at=_dt(end),
            correlation_id=window_event_id(agent, kind, start, end),
            producer="streams",
            agent=agent,
            window_start=_dt(start),
            window_end=_dt(end),
            window_kind=kind,
            requests=self.requests,
            answers=self.answers,
            failures=self.failures,
            latency_p50_ms=self.quantile(0.50),
            latency_p95_ms=self.quantile(0.95),
            latency_p99_ms=self.quantile(0.99),
            feedback_count=self.feedback_count,
            mean_rating=self.rating_sum / self.feedback_count if self.feedback_count else None,
            negative_rate=self.negatives / self.feedback_count if self.feedback_count else None,
            tokens=self.tokens,
            cost_usd=round(self.cost_usd, 9),
            cache_hits=self.cache_hits,
            subqueries_sent=self.subqueries_sent,
            subqueries_received=self.subqueries_received,
            mean_routing_score=self.score_sum / self.requests if self.requests else None,
        )

    def to_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        del d["_id_set"]
        d["latency"] = {str(k): v for k, v in self.latency.items()}  # JSON keys are strings
        d["applied"], d["ids"] = dict(self.applied), list(self.ids)  # a snapshot: the pane lives on in a cache
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pane:
        latency = {int(k): v for k, v in d.get("latency", {}).items()}
        return cls(**{**d, "latency": latency, "applied": dict(d.get("applied", {})), "ids": list(d.get("ids", []))})


def window_event_id(agent: str, kind: str, start: float, end: float) -> UUID:
    return uuid5(_NAMESPACE, f"metrics/v1/{agent}/{kind}/{start:.3f}/{end:.3f}")


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True)
class WindowSpec:
    """Window sizes in seconds. The pane is the largest slice dividing the tumbling size and the hopping step."""

    tumbling_s: int = 60
    hopping_s: int = 900
    hop_s: int = 60
    lateness_s: float = 10.0
    """Events up to this much older than the newest event time seen still count; later ones are dropped."""

    def __post_init__(self) -> None:
        if min(self.tumbling_s, self.hopping_s, self.hop_s) <= 0 or self.hopping_s % self.hop_s:
            raise ValueError("window sizes must be positive and the hopping size a multiple of its step")

    @property
    def pane_s(self) -> int:
        return math.gcd(self.tumbling_s, self.hop_s)

    def pane_of(self, t: float) -> int:
        return int(t // self.pane_s) * self.pane_s

    def windows_ending_by(self, kind: WindowKind, after: float, until: float) -> list[tuple[int, int]]:
        """(start, end) of every window of this kind with `after < end <= until`."""
        size, step = (self.tumbling_s, self.tumbling_s) if kind == "tumbling" else (self.hopping_s, self.hop_s)
        first_end = (math.floor(after / step) + 1) * step
        return [(end - size, end) for end in range(int(first_end), int(until) + 1, step)]

    def closed_until(self, kind: WindowKind, watermark: float) -> int:
        """End of the newest window of this kind that the watermark has closed."""
        step = self.tumbling_s if kind == "tumbling" else self.hop_s
        return int((watermark - self.lateness_s) // step) * step


class AgentWindows:
    """Window logic over one agent's panes (`pane start → Pane`) and its emitted marks (`kind → end`)."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec

    def window(self, panes: dict[int, Pane], start: int, end: int) -> Pane:
        merged = Pane()
        for pane_start in range(start, end, self.spec.pane_s):
            if (pane := panes.get(pane_start)) is not None:
                merged = merged.merge(pane)
        return merged

    def close(
        self, agent: str, panes: dict[int, Pane], emitted: dict[str, float], watermark: float
    ) -> list[AgentMetricsWindow]:
        """Windows the watermark closed since `emitted` (updated in place). Empty windows are not emitted."""
        out: list[AgentMetricsWindow] = []
        kinds: tuple[WindowKind, ...] = ("tumbling", "hopping")
        for kind in kinds:
            until = self.spec.closed_until(kind, watermark)
            if kind in emitted:
                after = emitted[kind]
            elif panes:
                after = min(panes)  # a fresh agent starts at its first pane, not at the epoch
            else:
                after = until
            for start, end in self.spec.windows_ending_by(kind, after, until):
                merged = self.window(panes, start, end)
                if merged != Pane():
                    out.append(merged.to_event(agent, kind, start, end))
            emitted[kind] = max(after, until)
        return out

    def removable(self, pane_start: int, emitted: dict[str, float]) -> bool:
        """True once every window containing the pane has been emitted."""
        spec = self.spec
        last_hopping_end = (pane_start + spec.hopping_s) // spec.hop_s * spec.hop_s
        return (
            emitted.get("tumbling", -math.inf) >= pane_start + spec.pane_s
            and emitted.get("hopping", -math.inf) >= last_hopping_end
        )

    def is_late(self, t: float, emitted: dict[str, float]) -> bool:
        """A fact is late when the tumbling window holding it has already been emitted."""
        closed = emitted.get("tumbling")
        return closed is not None and t < closed
