"""Flag rule for underperforming agents: a confidence bound on an agent's negative-outcome rate.

Pure: counts in, a verdict with its evidence out. An outcome is negative when the user's feedback was negative or the
task failed or timed out (`TrainingExample`). Per agent the rule looks at its `window` most recent judged outcomes:

- flag when there are at least `min_samples` of them and the Wilson lower bound of the negative rate exceeds both
  the floor `flag_rate` (A) and the reference rate + `margin`, where the reference is the lower of the other agents'
  pooled rate and the agent's own earlier rate (outcomes that left the window), each used only with `min_samples`;
- unflag only when the Wilson upper bound falls below `unflag_rate` (B < A) and the reference + `margin`.

Lower bound to flag and upper bound to unflag, with B < A, is the hysteresis: an agent near the line does not
flap. With z = 2.326 (one-sided 99 %) a 70 % negative agent among 15 % ones is flagged after about 20 judged
outcomes, while a 20 % agent needs 12 negatives out of 20 (binomial probability about 1e-4) to reach the floor.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

RULE = "wilson-negative-rate-v1"


def wilson(negatives: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a binomial rate; (0, 1) without observations."""
    if n == 0:
        return 0.0, 1.0
    p = negatives / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


@dataclass(frozen=True)
class FlagRule:
    min_samples: int = 20
    """Judged outcomes in the window before the agent can be flagged or unflagged."""
    window: int = 100
    """Most recent judged outcomes per agent the bounds are computed on."""
    flag_rate: float = 0.35
    """A: the lower bound of the negative rate must exceed this floor to flag."""
    unflag_rate: float = 0.30
    """B < A: the upper bound must fall below this to unflag."""
    margin: float = 0.10
    """How far above the reference rate (other agents, own history) the bound must be."""
    z: float = 2.326
    """Normal quantile of the one-sided bounds (2.326: 99 %)."""

    def __post_init__(self) -> None:
        if not 0 < self.unflag_rate < self.flag_rate < 1:
            raise ValueError("the flag rule needs 0 < unflag_rate < flag_rate < 1 (hysteresis)")
        if self.min_samples < 1 or self.window < self.min_samples:
            raise ValueError("the flag rule needs 1 <= min_samples <= window")


@dataclass(frozen=True)
class Verdict:
    action: str | None
    """`flag`, `unflag` or None (keep the current state)."""
    reason: str
    evidence: dict[str, float]


def judge(
    rule: FlagRule,
    recent: tuple[int, int],
    others: tuple[int, int],
    history: tuple[int, int],
    *,
    flagged: bool,
) -> Verdict:
    """Decide for one agent from (negatives, judged) of its window, of the other agents and of its own past."""
    negatives, n = recent
    lower, upper = wilson(negatives, n, rule.z)
    references = {name: k / m for name, (k, m) in (("others", others), ("history", history)) if m >= rule.min_samples}
    reference = min(references.values(), default=None)
    flag_at = max(rule.flag_rate, reference + rule.margin) if reference is not None else rule.flag_rate
    unflag_at = max(rule.unflag_rate, reference + rule.margin) if reference is not None else rule.unflag_rate
    evidence = {
        "negatives": float(negatives),
        "judged": float(n),
        "negative_rate": negatives / n if n else 0.0,
        "lower_bound": round(lower, 4),
        "upper_bound": round(upper, 4),
        "flag_threshold": round(flag_at, 4),
        "unflag_threshold": round(unflag_at, 4),
        "others_negatives": float(others[0]),
        "others_judged": float(others[1]),
        "history_negatives": float(history[0]),
        "history_judged": float(history[1]),
        "z": rule.z,
        "min_samples": float(rule.min_samples),
    }
    evidence |= {f"{name}_rate": round(rate, 4) for name, rate in references.items()}
    rate = f"{negatives}/{n} negative outcomes"
    if n < rule.min_samples:
        return Verdict(None, f"{rate}: fewer than {rule.min_samples}", evidence)
    if not flagged and lower > flag_at:
        compared = ", ".join(f"{k} {v:.0%}" for k, v in sorted(references.items())) or "no reference yet"
        reason = f"{rate}; lower bound {lower:.2f} > threshold {flag_at:.2f} ({compared})"
        return Verdict("flag", reason, evidence)
    if flagged and upper < unflag_at:
        return Verdict("unflag", f"{rate}; upper bound {upper:.2f} < threshold {unflag_at:.2f}", evidence)
    return Verdict(None, rate, evidence)


@dataclass
class _AgentOutcomes:
    recent: deque[bool]
    negatives: int = 0
    """Negatives in `recent` (kept, not summed per call)."""
    history: list[int] = field(default_factory=lambda: [0, 0])
    """(negatives, judged) of the outcomes that left the window."""


class OutcomeWindows:
    """Per-agent sliding windows of judged outcomes (True = negative), with each agent's earlier totals."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._agents: dict[str, _AgentOutcomes] = {}

    def add(self, agent: str, negative: bool) -> None:
        entry = self._agents.setdefault(agent, _AgentOutcomes(deque(maxlen=self._window)))
        if len(entry.recent) == self._window:
            oldest = entry.recent.popleft()
            entry.negatives -= oldest
            entry.history[0] += int(oldest)
            entry.history[1] += 1
        entry.recent.append(negative)
        entry.negatives += negative

    def restart(self, agent: str) -> None:
        """A new card version (or an operator's unflag): judge afresh; what was seen becomes the agent's past."""
        entry = self._agents.get(agent)
        if entry is None:
            return
        entry.history[0] += entry.negatives
        entry.history[1] += len(entry.recent)
        entry.recent.clear()
        entry.negatives = 0

    def forget(self, agent: str) -> None:
        self._agents.pop(agent, None)

    def recent(self, agent: str) -> tuple[int, int]:
        entry = self._agents.get(agent)
        return (entry.negatives, len(entry.recent)) if entry else (0, 0)

    def history(self, agent: str) -> tuple[int, int]:
        entry = self._agents.get(agent)
        return (entry.history[0], entry.history[1]) if entry else (0, 0)

    def others(self, agent: str, excluded: Iterable[str] = ()) -> tuple[int, int]:
        """Pooled recent outcomes of every other agent, except `excluded` ones."""
        skip = {agent, *excluded}
        pooled = [self.recent(a) for a in self._agents if a not in skip]
        return sum(k for k, _ in pooled), sum(n for _, n in pooled)
