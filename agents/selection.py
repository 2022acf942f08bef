"""Model selection inside an agent's pipeline: pick one of a step's candidate models for one input.

Three signals, each in [0, 1], summed with weights:
- **fit**: the input's measured properties (text height, page orientation, ink contrast) against the ranges each
  candidate declares;
- **similarity**: cosine of the embedded task description ("png image, upside-down page, small print ...") and the
  candidate's description;
- **memory**: the candidate's validation outcomes (plausibility and confidence) on past inputs with similar
  features, from `ModelOutcomeRecorded` events folded into a `ModelMemory` projection. Few outcomes weigh little.
Ties go to the earlier candidate in the card (the card's first candidate is the default).

Pure: numpy only; embeddings come in as vectors, events come in as values.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from smolit.contracts import ModelOutcomeRecorded


@dataclass(frozen=True)
class PageFeatures:
    """What can be measured on a page image before OCR (cheap: one pass of numpy over the pixels)."""

    format: str
    width: int
    height: int
    font_px: float
    """Median height of a text line's ink band, in pixels (about the font size)."""
    orientation: str
    """`upright` or `upside-down`, from which side of the text block is ragged (pages are left-aligned)."""
    contrast: str
    """`normal` or `faint` ink."""

    @property
    def font(self) -> str:
        return "small" if self.font_px < 13 else "large" if self.font_px > 30 else "normal"

    def buckets(self) -> dict[str, str]:
        """The discrete features the model memory matches on."""
        return {"format": self.format, "font": self.font, "orientation": self.orientation, "contrast": self.contrast}

    def describe(self, domain: str | None = None) -> str:
        """The task in words, for the embedding similarity to the candidates' descriptions."""
        text = (
            f"{self.format} scanned page, {self.orientation}, {self.font} print about {self.font_px:.0f} px high, "
            f"{self.contrast} ink contrast"
        )
        return text + (f", {domain} documents" if domain else "")


def _bands(mask: np.ndarray, min_count: int) -> list[tuple[int, int]]:
    rows = mask.sum(axis=1) >= min_count
    bands, start = [], None
    for y, on in enumerate(rows):
        if on and start is None:
            start = y
        elif not on and start is not None:
            bands.append((start, y))
            start = None
    if start is not None:
        bands.append((start, len(rows)))
    return bands


def _spread(values: list[int]) -> float:
    """Median absolute deviation: one stray band does not move it."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.median(np.abs(arr - np.median(arr))))


def page_features(gray: np.ndarray, fmt: str = "png") -> PageFeatures:
    """Features of one page given as a 2-D uint8 grey array (white paper, dark ink)."""
    page = gray.astype(np.float32)
    height, width = page.shape
    # A 2x2 mean damps scanner noise so that single dark pixels do not count as ink.
    smooth = (page[:-1, :-1] + page[1:, :-1] + page[:-1, 1:] + page[1:, 1:]) / 4 if min(page.shape) > 1 else page
    paper = float(np.median(smooth))
    darkest = float(np.percentile(smooth, 0.2))
    depth = paper - darkest
    contrast = "faint" if depth < 100 else "normal"
    mask = smooth < paper - max(40.0, 0.5 * depth)
    bands = [(a, b) for a, b in _bands(mask, max(2, width // 200)) if b - a >= 3]
    if not bands:
        return PageFeatures(fmt, width, height, 0.0, "upright", contrast)
    font_px = float(np.median([b - a for a, b in bands]))
    bands = [(a, b) for a, b in bands if b - a >= 0.6 * font_px]  # drop fragments (accents, split strokes)
    lefts, rights = [], []
    for a, b in bands:
        cols = np.flatnonzero(mask[a:b].sum(axis=0) >= 1)
        lefts.append(cols[0])
        rights.append(cols[-1])
    # Left-aligned text has a straight left edge and a ragged right one; turned upside down, the other way round.
    orientation = "upside-down" if len(bands) >= 3 and _spread(rights) < 0.5 * _spread(lefts) else "upright"
    return PageFeatures(fmt, width, height, font_px, orientation, contrast)


@dataclass(frozen=True)
class Candidate:
    """One candidate model as the selector sees it."""

    name: str
    description: str
    font_px: tuple[float, float] = (0.0, 1e9)
    orientations: frozenset[str] = frozenset({"upright"})
    contrast: frozenset[str] = frozenset({"normal"})

    def fit(self, f: PageFeatures) -> float:
        """Share of the input's properties inside the candidate's declared ranges."""
        checks = (
            self.font_px[0] <= f.font_px <= self.font_px[1],
            f.orientation in self.orientations,
            f.contrast in self.contrast,
        )
        return sum(checks) / len(checks)


def _score(outcome: ModelOutcomeRecorded) -> float:
    """Value of one validation outcome: failing the plausibility check is 0, passing is 0.5 plus half the
    confidence."""
    return 0.5 + 0.5 * (outcome.confidence or 0.0) if outcome.success else 0.0


@dataclass
class ModelMemory:
    """Projection of `ModelOutcomeRecorded` events: outcome count and value sum per (model, step, feature bucket)."""

    _stats: dict[tuple[str, str, frozenset[tuple[str, str]]], list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0.0, 0.0])
    )
    _seen: set[object] = field(default_factory=set)

    def apply(self, events: Iterable[object]) -> ModelMemory:
        """Fold events in (other event types are ignored; a redelivered event counts once)."""
        for event in events:
            if not isinstance(event, ModelOutcomeRecorded) or event.event_id in self._seen:
                continue
            self._seen.add(event.event_id)
            stat = self._stats[(event.model, event.step, frozenset(event.features.items()))]
            stat[0] += 1
            stat[1] += _score(event)
        return self

    def estimate(self, model: str, step: str, features: Mapping[str, str]) -> tuple[float, float]:
        """(mean outcome value, evidence) of `model` on inputs like `features`, from its most similar past inputs:
        the exact feature bucket when it has outcomes, else the buckets sharing most features (at least half),
        weighted by the shared share squared (3 of 4 features: 0.5625 an outcome)."""
        wanted = set(features.items())
        levels: dict[float, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for (name, kind, bucket), (count, value) in self._stats.items():
            if name != model or kind != step:
                continue
            share = len(wanted & bucket) / max(1, len(wanted))
            if share >= 0.5:
                levels[share][0] += share**2 * count
                levels[share][1] += share**2 * value
        if not levels:
            return 0.0, 0.0
        weight, total = levels[max(levels)]
        return total / weight, weight

    def outcomes(self) -> int:
        return int(sum(count for count, _ in self._stats.values()))


@dataclass(frozen=True)
class SelectionWeights:
    fit: float = 1.0
    similarity: float = 0.5
    memory: float = 1.5
    evidence: float = 2.0
    """Outcomes at which memory counts half (confidence = n / (n + evidence))."""


class Features(Protocol):
    """Measured properties of one input (`PageFeatures` for OCR, `entity_fields.TextFeatures` for entities)."""

    def buckets(self) -> dict[str, str]: ...


class Fits(Protocol):
    """A candidate model as the selector sees it: its name, description and fit to an input's features."""

    @property
    def name(self) -> str: ...

    def fit(self, features: Any, /) -> float: ...


@dataclass(frozen=True)
class Choice:
    model: str
    scores: dict[str, float]
    """Total score per candidate (for the log and the document metadata)."""
    reason: str


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm else 0.0


def select(
    candidates: Sequence[Fits],
    features: Features,
    *,
    step: str = "ocr",
    task_vector: np.ndarray | None = None,
    candidate_vectors: Mapping[str, np.ndarray] | None = None,
    memory: ModelMemory | None = None,
    context: Mapping[str, str] | None = None,
    weights: SelectionWeights = SelectionWeights(),
) -> Choice:
    """The candidate with the highest weighted fit + similarity + memory (earlier candidates win ties).

    `context` adds task properties the memory matches on besides the page's (e.g. the agent's `domain`)."""
    if not candidates:
        raise ValueError("no candidates to select from")
    if len(candidates) == 1:
        return Choice(candidates[0].name, {candidates[0].name: 0.0}, "only candidate")
    buckets = features.buckets() | dict(context or {})
    scores: dict[str, float] = {}
    parts: dict[str, tuple[float, float, float]] = {}
    for c in candidates:
        fit = c.fit(features)
        sim = 0.0
        if task_vector is not None and candidate_vectors and c.name in candidate_vectors:
            sim = max(0.0, _cosine(task_vector, candidate_vectors[c.name]))
        mem = 0.0
        if memory is not None:
            value, evidence = memory.estimate(c.name, step, buckets)
            # Unknown models sit at 0.5 (neither good nor bad); evidence moves them towards their record.
            trust = evidence / (evidence + weights.evidence)
            mem = 0.5 + trust * (value - 0.5)
        parts[c.name] = (fit, sim, mem)
        scores[c.name] = round(weights.fit * fit + weights.similarity * sim + weights.memory * mem, 6)
    best = max(candidates, key=lambda c: scores[c.name])  # max keeps the first of equal scores
    fit, sim, mem = parts[best.name]
    return Choice(best.name, scores, f"fit {fit:.2f}, similarity {sim:.2f}, memory {mem:.2f}")
