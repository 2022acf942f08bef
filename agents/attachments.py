"""The `request` pipeline stage: a request's image attachments read by the manager's current OCR model.

An agent card opts in with `pipeline: {request: [ocr]}`. The model is resolved per task by the model manager
(task type `ocr`, the card's OCR candidates preferred, alias `champion`) and held for the whole task, so a
promotion that lands mid-task changes only the next one. Each image gets the ingest step's timeout and
plausibility check; text that passes becomes an extra passage for the answer. A failed reading is recorded
(`ModelUse.error`) and the agent answers from its knowledge alone.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from smolit.contracts import STEP_CANDIDATES, AgentCard, Attachment, ModelOutcomeRecorded, ModelUse
from smolit.infra.llm import Passage
from smolit.infra.model_manager import Loaded, ModelManager, ModelNotFound
from smolit.infra.ocr import OcrEngine

from .ocr import OcrFailed, OcrPolicy, OcrStep
from .ocr_selection import output_checks
from .selection import page_features

if TYPE_CHECKING:
    from PIL.Image import Image

log = structlog.get_logger("smolit.agents")
OCR_TASK = "ocr"


class PipelineMetrics(NamedTuple):
    reads: Counter
    read_seconds: Histogram
    model_version: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PipelineMetrics:
        return cls(
            reads=Counter(
                "smolit_agent_attachment_reads_total",
                "Request attachments read by a pipeline model, per model, version and outcome (ok, failed)",
                ["model", "version", "outcome"],
                registry=registry,
            ),
            read_seconds=Histogram(
                "smolit_agent_attachment_read_seconds",
                "Time to read one attachment (OCR, plausibility check), per model",
                ["model"],
                registry=registry,
                buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
            ),
            model_version=Gauge(
                "smolit_agent_model_version",
                "Registry version the model manager currently serves for a model and alias",
                ["model", "alias"],
                registry=registry,
            ),
        )

    def current(self, loaded: Loaded) -> None:
        """ModelManager `on_change` hook: the version now served."""
        if loaded.version.isdigit():
            self.model_version.labels(loaded.name, loaded.alias).set(int(loaded.version))


class Readings(NamedTuple):
    passages: list[Passage]
    """Text of each attachment that was read plausibly (source `attachment:<name>`)."""
    uses: list[ModelUse]
    """The model and version run per attachment, with the error when its output was not used."""
    outcomes: list[ModelOutcomeRecorded]
    """Validation outcomes for the model memory (only when a request id was given)."""


class AttachmentReader:
    """Reads request attachments for agents whose card has `pipeline.request: [ocr]`."""

    def __init__(
        self, manager: ModelManager, policy: OcrPolicy | None = None, metrics: PipelineMetrics | None = None
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self._step = OcrStep(
            lambda: _no_engine(), policy or OcrPolicy()
        )  # only its timeout and plausibility check are used

    @property
    def manager(self) -> ModelManager:
        return self._manager

    def warm(self, cards: Mapping[str, AgentCard]) -> threading.Thread | None:
        """Resolve and load the OCR model of every card that reads attachments, in a background thread, so the
        first request does not pay the registry open and model load. Failures are logged: requests retry."""
        wanted = {(c.domain, _prefer(c)) for c in cards.values() if OCR_TASK in c.pipeline.request}
        if not wanted:
            return None

        def load() -> None:
            for domain, prefer in sorted(wanted, key=str):
                try:
                    loaded = self._manager.for_task(OCR_TASK, domain, prefer)
                    log.info("ocr model ready", model=loaded.name, version=loaded.version)
                except Exception as exc:
                    log.warning("ocr model not loaded at start", error=f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=load, name="model-warmup", daemon=True)
        thread.start()
        return thread

    def read(self, card: AgentCard, attachments: Sequence[Attachment], request_id: uuid.UUID | None = None) -> Readings:
        """Passages with each readable attachment's text and the model run per attachment. With a `request_id`,
        each model reading also gives a `ModelOutcomeRecorded` (version, page features, validation) for the model
        memory."""
        if not attachments or OCR_TASK not in card.pipeline.request:
            return Readings([], [], [])
        prefer = _prefer(card)
        try:
            loaded = self._manager.for_task(OCR_TASK, card.domain, prefer)
        except Exception as exc:  # registry down or no OCR model: answer without the attachments, say why
            log.warning("ocr model unavailable", agent=card.name, error=str(exc))
            reason = str(exc) if isinstance(exc, ModelNotFound) else f"{type(exc).__name__}: {exc}"
            name = (prefer or STEP_CANDIDATES[OCR_TASK])[0]
            failed = [ModelUse(step=OCR_TASK, name=name, version="", input=a.name, error=reason) for a in attachments]
            return Readings([], failed, [])
        passages: list[Passage] = []
        uses: list[ModelUse] = []
        outcomes: list[ModelOutcomeRecorded] = []
        for attachment in attachments:
            use = ModelUse(
                step=OCR_TASK, name=loaded.name, version=loaded.version, alias=loaded.alias, input=attachment.name
            )
            try:
                images = decode_image(attachment)
            except OcrFailed as exc:  # not the model's doing: no outcome for its memory
                uses.append(use.model_copy(update={"error": str(exc)}))
                self._count(use, "failed")
                continue
            started = time.perf_counter()
            try:
                read = self._step.read_with(loaded.model, images)
            except OcrFailed as exc:
                uses.append(use.model_copy(update={"error": str(exc)}))
                self._count(use, "failed")
                seconds = time.perf_counter() - started
                outcomes += self._outcome(request_id, card, use, images, False, {}, exc.confidence, seconds)
                continue
            checks = output_checks(read.text)
            ok = all(checks.values())
            outcomes += self._outcome(request_id, card, use, images, ok, checks, read.mean_confidence, read.seconds)
            uses.append(use.model_copy(update={"seconds": round(read.seconds, 3)}))
            self._count(use, "ok", read.seconds)
            passages.append(
                Passage(text=read.text, source=f"attachment:{attachment.name}", title=attachment.name, score=1.0)
            )
        return Readings(passages, uses, outcomes)

    def _outcome(
        self,
        request_id: uuid.UUID | None,
        card: AgentCard,
        use: ModelUse,
        images: list[Image],
        success: bool,
        checks: dict[str, bool],
        confidence: float | None,
        seconds: float,
    ) -> list[ModelOutcomeRecorded]:
        if request_id is None or not images:
            return []
        fmt = Path(use.input or "").suffix.lstrip(".").lower() or "png"
        features = page_features(np.asarray(images[0].convert("L")), fmt).buckets()
        return [
            ModelOutcomeRecorded(
                # Derived id: a redelivered task's reading by the same version is deduped by the memory.
                event_id=uuid.uuid5(request_id, f"{use.name}/{use.version}/{use.input}"),
                correlation_id=request_id,
                producer="agents",
                model=use.name,
                version=use.version,
                step=OCR_TASK,
                agent=card.name,
                features=features | ({"domain": card.domain} if card.domain else {}),
                success=success,
                checks=checks,
                confidence=None if confidence is None else round(confidence, 4),
                seconds=round(seconds, 3),
                source=use.input,
                selected_by="manager",
            )
        ]

    def _count(self, use: ModelUse, outcome: str, seconds: float | None = None) -> None:
        if self._metrics is None:
            return
        self._metrics.reads.labels(use.name, use.version, outcome).inc()
        if seconds is not None:
            self._metrics.read_seconds.labels(use.name).observe(seconds)

    def close(self) -> None:
        self._step.close()


def _prefer(card: AgentCard) -> tuple[str, ...]:
    """The card's own OCR candidates; none listed: the manager picks by domain tag, else `smolit-ocr` (first by
    name)."""
    return card.pipeline.candidates.get(OCR_TASK, ())


def decode_image(attachment: Attachment) -> list[Image]:
    """Every frame of an attachment's image, RGB. Raises OcrFailed for bad base64 or an unreadable image."""
    from PIL import Image as PILImage
    from PIL import ImageSequence, UnidentifiedImageError

    try:
        raw = base64.b64decode(attachment.data, validate=True)
        with PILImage.open(io.BytesIO(raw)) as image:
            return [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise OcrFailed(f"attachment {attachment.name!r} is not a readable image ({type(exc).__name__})") from exc


def _no_engine() -> OcrEngine:
    raise RuntimeError("the attachment reader runs the manager's model, never its own")
