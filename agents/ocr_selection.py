"""The `ocr` step with several candidate models: a selector picks one per file and each outcome is recorded.

A card lists `pipeline: {ingest: [ocr], candidates: {ocr: [smolit-ocr-fast, smolit-ocr, smolit-ocr-upscale]}}`.
For each file the page features of its first image are measured, `selection.select` picks the candidate (fit,
description similarity, model memory), that candidate reads every image of the file, and its validation outcome
(plausibility, confidence) goes to `on_outcome` as a `ModelOutcomeRecorded` event, which also updates the memory
used for the next file.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from smolit.contracts import ModelOutcomeRecorded
from smolit.infra.ocr import OCR_VARIANTS, OcrEngine, OcrVariant, RapidOcrEngine
from smolit.infra.settings import Settings

from .checks import amounts_consistent
from .ocr import OcrFailed, OcrPolicy, OcrStep, OcrText
from .selection import Candidate, Choice, ModelMemory, PageFeatures, page_features, select

if TYPE_CHECKING:
    from PIL.Image import Image

Embed = Callable[[list[str]], np.ndarray]


def output_checks(text: str) -> dict[str, bool]:
    """The post-processing checks that apply to an OCR text, with their results."""
    amounts = amounts_consistent(text)
    return {} if amounts is None else {"amounts": amounts}


def candidate(variant: OcrVariant) -> Candidate:
    return Candidate(variant.name, variant.description, variant.font_px, variant.orientations, variant.contrast)


class SelectingOcrStep(OcrStep):
    """An `OcrStep` over several OCR candidates that share one loaded model (`RapidOcrEngine(shared=...)`)."""

    def __init__(
        self,
        engines: dict[str, Callable[[], OcrEngine]],
        policy: OcrPolicy | None = None,
        *,
        memory: ModelMemory | None = None,
        embed: Embed | None = None,
        agent: str | None = None,
        domain: str | None = None,
        on_outcome: Callable[[ModelOutcomeRecorded], None] | None = None,
    ) -> None:
        names = list(engines)
        super().__init__(engines[names[0]], policy or OcrPolicy())
        self._factories = engines
        self._engines: dict[str, OcrEngine] = {}
        self.candidates = [candidate(OCR_VARIANTS[name]) for name in names]
        self.memory = memory if memory is not None else ModelMemory()
        self._embed = embed
        self._vectors: dict[str, np.ndarray] | None = None
        self.agent, self.domain = agent, domain
        self._on_outcome = on_outcome

    def engine_for(self, name: str) -> OcrEngine:
        with self._lock:
            if name not in self._engines:
                self._engines[name] = self._factories[name]()
            return self._engines[name]

    def choose(self, features: PageFeatures) -> Choice:
        task_vector = None
        if self._embed is not None:
            if self._vectors is None:  # candidates' descriptions are embedded once
                vectors = self._embed([c.description for c in self.candidates])
                self._vectors = {c.name: vectors[i] for i, c in enumerate(self.candidates)}
            task_vector = self._embed([features.describe(self.domain)])[0]
        return select(
            self.candidates,
            features,
            task_vector=task_vector,
            candidate_vectors=self._vectors,
            memory=self.memory,
            context=self._context,
        )

    @property
    def _context(self) -> dict[str, str]:
        return {"domain": self.domain} if self.domain else {}

    def read_images(self, images: Sequence[Image], fmt: str = "png", source: str | None = None) -> OcrText:
        if not images:
            return super().read_images(images)
        features = page_features(np.asarray(images[0].convert("L")), fmt)
        choice = self.choose(features)
        try:
            engine = self.engine_for(choice.model)
        except Exception as exc:
            raise OcrFailed(f"OCR model {choice.model} unavailable: {type(exc).__name__}: {exc}") from exc
        started = time.perf_counter()
        selection = {"features": features.buckets() | {"font_px": features.font_px}, "scores": choice.scores}
        try:
            read = self.read_with(engine, images)
        except OcrFailed as exc:
            self._record(choice.model, features, False, exc.confidence, time.perf_counter() - started, source)
            raise OcrFailed(f"{exc} (model {choice.model})", exc.confidence) from exc
        checks = output_checks(read.text)
        self._record(choice.model, features, all(checks.values()), read.mean_confidence, read.seconds, source, checks)
        selection["checks"] = checks
        return OcrText(
            read.text,
            read.per_image,
            read.chars,
            read.mean_confidence,
            read.images,
            read.seconds,
            choice.model,
            selection,
        )

    def _record(
        self,
        model: str,
        features: PageFeatures,
        success: bool,
        confidence: float | None,
        seconds: float,
        source: str | None,
        checks: dict[str, bool] | None = None,
    ) -> None:
        event = ModelOutcomeRecorded(
            correlation_id=uuid.uuid4(),
            producer="ingest",
            model=model,
            step="ocr",
            agent=self.agent,
            features=features.buckets() | self._context,
            success=success,
            checks=checks or {},
            confidence=None if confidence is None else round(confidence, 4),
            seconds=round(seconds, 3),
            source=source,
            selected_by="selector" if len(self.candidates) > 1 else "only-candidate",
        )
        self.memory.apply([event])
        if self._on_outcome is not None:
            self._on_outcome(event)


def build_selecting_step(
    settings: Settings,
    names: Sequence[str],
    *,
    memory: ModelMemory | None = None,
    embed: Embed | None = None,
    agent: str | None = None,
    domain: str | None = None,
    on_outcome: Callable[[ModelOutcomeRecorded], None] | None = None,
) -> SelectingOcrStep:
    """The candidates `names` (card order) over one lazily loaded PP-OCRv4 model."""
    policy = OcrPolicy(settings.ocr_timeout_s, settings.ocr_min_chars, settings.ocr_min_confidence)
    base: list[RapidOcrEngine] = []

    def factory(variant: OcrVariant) -> Callable[[], OcrEngine]:
        def build() -> OcrEngine:
            if not base:
                base.append(RapidOcrEngine(threads=settings.threads))
            return RapidOcrEngine(variant=variant, shared=base[0])

        return build

    engines = {name: factory(OCR_VARIANTS[name]) for name in names}
    return SelectingOcrStep(
        engines, policy, memory=memory, embed=embed, agent=agent, domain=domain, on_outcome=on_outcome
    )


def load_memory(consumer_config: dict[str, object], topic: str) -> ModelMemory:
    """The model memory projection rebuilt from the model-outcomes topic (empty when the topic does not exist)."""
    from smolit.infra.kafka.reader import TopicMissing, read_topic_events

    try:
        return ModelMemory().apply(read_topic_events(dict(consumer_config), topic))
    except TopicMissing:
        return ModelMemory()
