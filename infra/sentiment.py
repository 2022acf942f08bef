"""Sentiment classifier: L2-regularised logistic regression on MiniLM sentence embeddings, in numpy.

It scores sentences: a text (a feedback comment, a review) is split into sentences and its positive probability
is the mean over them. Trained on whole movie reviews it called short feedback comments such as "This answer is
useless and wrong." positive with 0.90; trained on the reviews' sentences (each labelled with its review) it
transfers to short comments and scores held-out reviews better too (see README).

Pure: `sentences`, `fit`, `SentimentModel.score`/`predict`, `evaluate`, and the payload the registry stores
(`to_payload`/`from_payload`: plain floats and strings, so `torch.load(weights_only=True)` reads it). Newton's
method on 384 weights converges in a few steps and is deterministic, so a seed gives the same model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LABELS = ("negative", "positive")
TASK_TYPE = "sentiment"
INPUT_FORMAT = "text: one feedback comment or review, embedded with all-MiniLM-L6-v2 (384 x float32)"


@dataclass(frozen=True)
class Prediction:
    label: str
    """`positive` or `negative`."""
    confidence: float
    """Probability of `label` (0.5–1.0)."""


@dataclass(frozen=True)
class SentimentModel:
    weights: np.ndarray
    bias: float
    embedder: str
    """Embedder the weights were fitted on (inputs must come from the same one)."""

    def positive_probability(self, embeddings: np.ndarray) -> np.ndarray:
        """Per sentence embedding."""
        return _sigmoid(np.asarray(embeddings, dtype=np.float64) @ self.weights + self.bias)

    def score(self, sentence_embeddings: np.ndarray) -> float:
        """Positive probability of one text: the mean over its sentences."""
        return float(self.positive_probability(sentence_embeddings).mean())

    def predict(self, sentence_embeddings: np.ndarray) -> Prediction:
        p = self.score(sentence_embeddings)
        return Prediction("positive", p) if p >= 0.5 else Prediction("negative", 1.0 - p)

    def to_payload(self) -> dict[str, Any]:
        return {"weights": [float(w) for w in self.weights], "bias": float(self.bias), "embedder": self.embedder}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> SentimentModel:
        return cls(np.asarray(payload["weights"], dtype=np.float64), float(payload["bias"]), str(payload["embedder"]))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str, min_chars: int = 15, max_chars: int = 400) -> list[str]:
    """The sentences of `text` worth scoring (very short or run-on pieces dropped); the text itself if none is."""
    kept = [s for s in _SENTENCE_END.split(text.strip()) if min_chars <= len(s) <= max_chars]
    return kept or [text.strip()[:max_chars]]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))


def fit(embeddings: np.ndarray, labels: np.ndarray, *, l2: float = 1.0, embedder: str = "minilm") -> SentimentModel:
    """Logistic regression (labels 0/1) by Newton's method; `l2` penalises the weights, not the bias."""
    x = np.hstack([np.asarray(embeddings, dtype=np.float64), np.ones((len(embeddings), 1))])
    y = np.asarray(labels, dtype=np.float64)
    penalty = np.eye(x.shape[1]) * l2
    penalty[-1, -1] = 0.0
    theta = np.zeros(x.shape[1])
    for _ in range(50):
        p = _sigmoid(x @ theta)
        gradient = x.T @ (p - y) + penalty @ theta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty + np.eye(x.shape[1]) * 1e-9
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return SentimentModel(theta[:-1].copy(), float(theta[-1]), embedder)


def split(n: int, seed: int, test_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffled (train, test) index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * (1 - test_fraction))
    return order[:cut], order[cut:]


def evaluate(model: SentimentModel, texts: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1, log loss and expected calibration error (5 confidence bins) on held-out texts, each
    given as the embeddings of its sentences."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray([model.score(t) for t in texts])
    predicted = (p >= 0.5).astype(int)
    f1s = []
    for cls in (0, 1):
        tp = int(np.sum((predicted == cls) & (y == cls)))
        fp = int(np.sum((predicted == cls) & (y != cls)))
        fn = int(np.sum((predicted != cls) & (y == cls)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    eps = 1e-12
    log_loss = -float(np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    confidence = np.maximum(p, 1 - p)
    ece = 0.0
    for low in np.linspace(0.5, 1.0, 6)[:-1]:  # confidence lies in [0.5, 1]: 5 bins of 0.1
        inside = (confidence >= low) & (confidence < low + 0.1 + (1e-9 if math.isclose(low, 0.9) else 0.0))
        if inside.any():
            ece += float(inside.mean()) * abs(
                float(np.mean(predicted[inside] == y[inside])) - float(confidence[inside].mean())
            )
    return {
        "accuracy": float(np.mean(predicted == y)),
        "macro_f1": float(np.mean(f1s)),
        "log_loss": log_loss,
        "ece": ece,
        "holdout_size": float(len(y)),
    }


class SentimentClassifier:
    """A loaded model with the embedder it needs: text in, `Prediction` out (one encode call per text)."""

    def __init__(self, model: SentimentModel, embed: Callable[[Sequence[str]], np.ndarray]) -> None:
        self.model = model
        self._embed = embed

    def classify(self, text: str) -> Prediction:
        return self.model.predict(self._embed(sentences(text)))
