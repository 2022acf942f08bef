"""Automatic rollback: is a new champion's live positive-outcome rate significantly below its predecessor's?"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist


@dataclass
class LiveOutcomes:
    """Positive outcomes and judged outcomes per router model version, from training examples."""

    counts: dict[str, list[int]] = field(default_factory=dict)

    def add(self, version: str, good: bool) -> None:
        entry = self.counts.setdefault(version, [0, 0])
        entry[0] += int(good)
        entry[1] += 1

    def rate(self, version: str) -> tuple[int, int]:
        good, judged = self.counts.get(version, (0, 0))
        return good, judged


def significantly_worse(new: tuple[int, int], old: tuple[int, int], alpha: float, min_each: int) -> float | None:
    """One-sided two-proportion z-test that `new`'s rate is below `old`'s: the z score when significant, else None.

    Needs `min_each` judged outcomes on both sides (small samples decide nothing).
    """
    if new[1] < min_each or old[1] < min_each:
        return None
    z = two_proportion_z(new, old)
    return z if z is not None and z < -NormalDist().inv_cdf(1 - alpha) else None


def two_proportion_z(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    """Pooled two-proportion z score of `a`'s (positives, judged) rate minus `b`'s; None when undefined."""
    (k1, n1), (k2, n2) = a, b
    if n1 == 0 or n2 == 0:
        return None
    pooled = (k1 + k2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return None
    return (k1 / n1 - k2 / n2) / spread
