"""Decision policy: from per-agent scores to one agent, with a confidence threshold and a fallback agent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    agent: str
    score: float
    low_confidence: bool
    """No specialised agent reached the threshold; the fallback took the request."""


class NoAgents(ValueError):
    """There is no agent to route to."""


def decide(
    scores: Mapping[str, float],
    *,
    fallback: str,
    threshold: float,
    requested: str | None = None,
) -> Decision:
    """Pick the best-scoring agent; below `threshold` use `fallback` and flag the request as low-confidence.

    A request that names an existing agent goes there regardless of scores.
    """
    if not scores:
        raise NoAgents("no agents are registered")
    if requested is not None and requested in scores:
        return Decision(requested, scores[requested], low_confidence=False)
    best = max(sorted(scores), key=lambda a: scores[a])  # sorted: ties break by name, deterministically
    if best == fallback:  # still low-confidence when even the fallback is unsure: no agent fits (a new domain?)
        return Decision(best, scores[best], low_confidence=scores[best] < threshold)
    if scores[best] < threshold and fallback in scores:
        return Decision(fallback, scores[fallback], low_confidence=True)
    return Decision(best, scores[best], low_confidence=scores[best] < threshold)
