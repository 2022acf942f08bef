"""Routing-quality metrics: classification on examples with a known right agent, calibration on all outcomes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    examples: int
    accuracy: float | None
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None
    per_agent_f1: dict[str, float]
    log_loss: float | None
    calibration_error: float | None
    """Expected calibration error of the predicted good-outcome probability (10 equal-width bins)."""

    def as_metrics(self) -> dict[str, float]:
        """Flat name -> value mapping for MLflow (None values left out)."""
        flat: dict[str, float] = {"examples": float(self.examples)}
        for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "log_loss", "calibration_error"):
            if (value := getattr(self, key)) is not None:
                flat[key] = value
        flat |= {f"f1_{agent}": f1 for agent, f1 in self.per_agent_f1.items()}
        return flat


def classification(truth: Sequence[str], predicted: Sequence[str], agents: Sequence[str]) -> dict[str, object]:
    if not truth:
        return {"accuracy": None, "macro_precision": None, "macro_recall": None, "macro_f1": None, "per_agent_f1": {}}
    t, p = np.asarray(truth), np.asarray(predicted)
    precisions, recalls, f1s = [], [], {}
    # Macro averages over agents that occur in the truth or the predictions (absent-and-never-predicted adds nothing).
    for agent in agents:
        tp = int(np.sum((p == agent) & (t == agent)))
        fp = int(np.sum((p == agent) & (t != agent)))
        fn = int(np.sum((p != agent) & (t == agent)))
        if tp + fp + fn == 0:
            continue
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s[agent] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float(np.mean(t == p)),
        "macro_precision": float(np.mean(precisions)),
        "macro_recall": float(np.mean(recalls)),
        "macro_f1": float(np.mean(list(f1s.values()))),
        "per_agent_f1": f1s,
    }


def calibration(probabilities: Sequence[float], outcomes: Sequence[int], bins: int = 10) -> dict[str, float | None]:
    """Log-loss and expected calibration error of good-outcome probabilities against 0/1 outcomes."""
    if not probabilities:
        return {"log_loss": None, "calibration_error": None}
    prob = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(outcomes, dtype=np.float64)
    log_loss = float(-np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob)))
    which = np.minimum((prob * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(prob[mask].mean() - y[mask].mean())
    return {"log_loss": log_loss, "calibration_error": float(ece)}


def fit_threshold(top_probabilities: Sequence[float], correct: Sequence[bool], target_precision: float) -> float:
    """Lowest top probability at which routing on held-out outcomes is still `target_precision` precise.

    Requests whose best agent scores below it go to the fallback agent. 0.5 when the target is never reached
    (too little data to say), 0.0 when every held-out route was right.
    """
    if not top_probabilities:
        return 0.5
    order = np.argsort(-np.asarray(top_probabilities, dtype=np.float64), kind="stable")
    p = np.asarray(top_probabilities, dtype=np.float64)[order]
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    precision = hits / np.arange(1, len(p) + 1)
    ok = np.flatnonzero(precision >= target_precision)
    if ok.size == 0:
        return 0.5
    if ok[-1] == len(p) - 1:
        return 0.0
    return float(p[ok[-1]])
