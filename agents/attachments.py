"""The `request` pipeline stage: a request's image attachments read by a registered OCR model.

An agent card opts in with `pipeline: {request: [ocr]}`. With one OCR candidate (or none listed) the model is
resolved per task by the model manager (task type `ocr`, the card's candidate preferred, alias `champion`). With
several (`pipeline.candidates.ocr`) the selector picks one per attachment, as ingest does: the page features measured
on the image against each candidate's declared ranges, plus the model memory (validation outcomes of earlier
readings with similar features, folded from the model-outcomes topic); the chosen candidate's champion comes from the
manager. Each model is held for the whole task, so a promotion that lands mid-task changes only the next one. Each
image gets the ingest step's timeout and plausibility check; text that passes becomes an extra passage for the
answer. A failed reading is recorded (`ModelUse.error`) and the agent answers from its knowledge alone.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from smolit.contracts import STEP_CANDIDATES, AgentCard, Attachment, Event, ModelOutcomeRecorded, ModelUse, TaskAssigned
from smolit.infra.llm import Passage
from smolit.infra.model_manager import DEFAULT_ALIAS, Loaded, ModelManager, ModelNotFound
from smolit.infra.ocr import OcrEngine

from .ocr import OcrBudgetSpent, OcrFailed, OcrPolicy, OcrStep
from .ocr_selection import candidate, output_checks
from .selection import Choice, ModelMemory, PageFeatures, page_features, select

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
                "Request attachments read by a pipeline model, per model, version and outcome (ok, failed, skipped:"
                " time budget spent)",
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
        self,
        manager: ModelManager,
        policy: OcrPolicy | None = None,
        metrics: PipelineMetrics | None = None,
        memory: ModelMemory | None = None,
        task_budget_s: float | None = None,
        batch_budget_s: float | None = None,
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        # OCR runs inside the tasks consumer loop: a task's attachments share `task_budget_s`, and all tasks of one
        # consumed batch share `batch_budget_s`, so a batch returns to polling well within max.poll.interval.ms.
        self._task_budget_s = task_budget_s
        self._batch_budget_s = batch_budget_s
        self._batch_spent = 0.0
        self.memory = memory if memory is not None else ModelMemory()
        """Model memory the selector reads; the service also folds the model-outcomes topic into it."""
        self._step = OcrStep(
            lambda: _no_engine(), policy or OcrPolicy()
        )  # only its timeout and plausibility check are used

    @property
    def manager(self) -> ModelManager:
        return self._manager

    def warm(self, cards: Mapping[str, AgentCard]) -> threading.Thread | None:
        """Resolve and load the OCR model of every card that reads attachments, in a background thread, so the
        first request does not pay the registry open and model load. Failures are logged: requests retry."""
        # A selecting card may use any of its candidates: all are warmed (they share one set of ONNX sessions).
        wanted: set[tuple[str | None, tuple[str, ...]]] = {
            (c.domain, (name,)) for c in cards.values() if _selects(c) for name in _prefer(c)
        }
        wanted |= {(c.domain, _prefer(c)) for c in cards.values() if OCR_TASK in c.pipeline.request and not _selects(c)}
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

    def new_batch(self) -> None:
        """A consumed batch starts: its tasks get a fresh `batch_budget_s`."""
        self._batch_spent = 0.0

    def for_work(self, card: AgentCard, work: Event, outcomes: list[Event]) -> tuple[list[Passage], list[ModelUse]]:
        """The runtime's entry: a task's attachments read (passages, model uses), outcomes appended for publishing."""
        if not isinstance(work, TaskAssigned) or not work.attachments:
            return [], []
        passages, uses, read = self.read(card, work.attachments, work.correlation_id, work.model_hints)
        outcomes += read
        for use in uses:
            log.info(
                "attachment read",
                request_id=str(work.correlation_id),
                agent=card.name,
                model=use.name,
                version=use.version,
                selected_by=use.selected_by,
                error=use.error,
            )
        return passages, uses

    def read(
        self,
        card: AgentCard,
        attachments: Sequence[Attachment],
        request_id: uuid.UUID | None = None,
        hints: Mapping[str, str] | None = None,
    ) -> Readings:
        """Passages with each readable attachment's text and the model run per attachment. With a `request_id`,
        each model reading also gives a `ModelOutcomeRecorded` (version, page features, validation) for the model
        memory. `hints` (step -> model, from the router's decision) names the model to use when it is one of the
        card's candidates for the step; otherwise it is ignored and each `ModelUse.hint_ignored` says why."""
        if not attachments or OCR_TASK not in card.pipeline.request:
            return Readings([], [], [])
        task = _Task(card, request_id, {}, *_hint(card, (hints or {}).get(OCR_TASK)))
        if task.hint is None and not _selects(card):
            prefer = _prefer(card)
            try:
                task.held[""] = self._manager.for_task(OCR_TASK, card.domain, prefer)
            except Exception as exc:  # registry down or no OCR model: answer without the attachments, say why
                log.warning("ocr model unavailable", agent=card.name, error=str(exc))
                name = (prefer or STEP_CANDIDATES[OCR_TASK])[0]
                failed = [task.use(name, "", None, a.name, error=_why(exc)) for a in attachments]
                return Readings([], failed, [])
        readings = Readings([], [], [])
        started = time.perf_counter()
        for attachment in attachments:
            budget = self._budget(started)
            before = time.perf_counter()
            self._read_one(task, attachment, readings, budget)
            self._batch_spent += time.perf_counter() - before
        return readings

    def _budget(self, task_started: float) -> float | None:
        """Seconds this attachment may take: what is left of the task's and of the batch's budget."""
        left = [
            *([self._task_budget_s - (time.perf_counter() - task_started)] if self._task_budget_s else []),
            *([self._batch_budget_s - self._batch_spent] if self._batch_budget_s else []),
        ]
        return min(left) if left else None

    def _read_one(self, task: _Task, attachment: Attachment, out: Readings, budget: float | None) -> None:
        card, resolved = task.card, task.held.get("")
        if budget is not None and budget <= 0:  # not the model's doing: no outcome for its memory
            name = resolved.name if resolved else task.hint or _prefer(card)[0]
            version, alias = (resolved.version, resolved.alias) if resolved else ("", None)
            why = "attachment time budget spent (settings SMOLIT_ATTACHMENT_TASK_BUDGET_S, _BATCH_BUDGET_S)"
            out.uses.append(task.use(name, version, alias, attachment.name, error=why))
            self._count(name, version, "skipped")
            return
        try:
            images = decode_image(attachment)
        except OcrFailed as exc:  # not the model's doing: no outcome for its memory
            name = resolved.name if resolved else task.hint or _prefer(card)[0]
            version, alias = (resolved.version, resolved.alias) if resolved else ("", None)
            out.uses.append(task.use(name, version, alias, attachment.name, error=str(exc)))
            self._count(name, version, "failed")
            return
        fmt = Path(attachment.name).suffix.lstrip(".").lower() or "png"
        features = page_features(np.asarray(images[0].convert("L")), fmt)
        scores: dict[str, float] = {}
        if resolved is not None:
            loaded, selected_by = resolved, "manager"
        else:
            if task.hint is not None:
                wanted, selected_by = task.hint, "hint"
            else:
                choice = self._choose(card, features)
                wanted, selected_by, scores = choice.model, "selector", choice.scores
            try:
                loaded = task.held.get(wanted) or self._manager.get(f"{wanted}@{DEFAULT_ALIAS}")
            except Exception as exc:
                log.warning("ocr candidate unavailable", agent=card.name, model=wanted, error=str(exc))
                use = task.use(wanted, "", None, attachment.name, error=_why(exc))
                out.uses.append(use.model_copy(update={"scores": scores, "selected_by": selected_by}))
                self._count(wanted, "", "failed")
                return
            task.held[wanted] = loaded
        use = task.use(loaded.name, loaded.version, loaded.alias, attachment.name)
        use = use.model_copy(update={"scores": scores, "selected_by": selected_by})
        started = time.perf_counter()
        try:
            read = self._step.read_with(loaded.model, images, budget, self._policy(card))
        except OcrBudgetSpent as exc:  # cut short by the budget: recorded, but not held against the model
            out.uses.append(use.model_copy(update={"error": str(exc)}))
            self._count(use.name, use.version, "skipped")
            return
        except OcrFailed as exc:
            out.uses.append(use.model_copy(update={"error": str(exc)}))
            self._count(use.name, use.version, "failed")
            seconds = time.perf_counter() - started
            out.outcomes.extend(self._outcome(task, use, features, False, {}, exc.confidence, seconds))
            return
        checks = output_checks(read.text)
        ok = all(checks.values())
        out.outcomes.extend(self._outcome(task, use, features, ok, checks, read.mean_confidence, read.seconds))
        out.uses.append(use.model_copy(update={"seconds": round(read.seconds, 3)}))
        self._count(use.name, use.version, "ok", read.seconds)
        out.passages.append(
            Passage(text=read.text, source=f"attachment:{attachment.name}", title=attachment.name, score=1.0)
        )

    def _policy(self, card: AgentCard) -> OcrPolicy:
        """The service's OCR thresholds with the card's declared checks (`pipeline.checks.ocr`) in their place."""
        return self._step.policy.with_checks(card.pipeline.checks_for(OCR_TASK))

    def _choose(self, card: AgentCard, features: PageFeatures) -> Choice:
        """The selector over the card's OCR candidates: measured fit plus model memory (no embedder here, so no
        description similarity)."""
        from smolit.infra.ocr import OCR_VARIANTS

        candidates = [candidate(OCR_VARIANTS[name]) for name in _prefer(card)]
        context = {"domain": card.domain} if card.domain else {}
        choice = select(candidates, features, memory=self.memory, context=context)
        log.info("ocr candidate selected", agent=card.name, model=choice.model, reason=choice.reason)
        return choice

    def _outcome(
        self,
        task: _Task,
        use: ModelUse,
        page: PageFeatures,
        success: bool,
        checks: dict[str, bool],
        confidence: float | None,
        seconds: float,
    ) -> list[ModelOutcomeRecorded]:
        request_id, card = task.request_id, task.card
        if request_id is None:
            return []
        features = page.buckets()
        events = [
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
                selected_by=use.selected_by or "manager",
            )
        ]
        self.memory.apply(events)  # the next attachment already sees it (the topic copy is deduped by id)
        return events

    def _count(self, model: str, version: str, outcome: str, seconds: float | None = None) -> None:
        if self._metrics is None:
            return
        self._metrics.reads.labels(model, version, outcome).inc()
        if seconds is not None:
            self._metrics.read_seconds.labels(model).observe(seconds)

    def close(self) -> None:
        self._step.close()


@dataclass
class _Task:
    """One task's reading: the models held for it and the router's hint."""

    card: AgentCard
    request_id: uuid.UUID | None
    held: dict[str, Loaded]
    """Models resolved once and held for every attachment (`""`: the manager's resolution for the card)."""
    hint: str | None
    hint_ignored: str | None

    def use(self, name: str, version: str, alias: str | None, source: str, error: str | None = None) -> ModelUse:
        return ModelUse(
            step=OCR_TASK,
            name=name,
            version=version,
            alias=alias,
            input=source,
            error=error,
            hint_ignored=self.hint_ignored,
        )


def _hint(card: AgentCard, hint: str | None) -> tuple[str | None, str | None]:
    """(the hinted model to use, why a hint is ignored): honoured only for one of the card's candidates."""
    if hint is None:
        return None, None
    allowed = card.pipeline.candidates_for(OCR_TASK)
    if hint in allowed:
        return hint, None
    return None, f"hint {hint} is not an {OCR_TASK} candidate of agent {card.name} ({', '.join(allowed)})"


def _selects(card: AgentCard) -> bool:
    """The card reads attachments and lists several OCR candidates: the selector picks per attachment."""
    return OCR_TASK in card.pipeline.request and len(_prefer(card)) > 1


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ModelNotFound) else f"{type(exc).__name__}: {exc}"


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
