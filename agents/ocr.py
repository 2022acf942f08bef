"""The `ocr` ingest step: images and scanned PDF pages to text, with a timeout and a plausibility check.

An agent card opts in with `pipeline: {ingest: [ocr]}`. Each image (each frame of a multi-page TIFF, each image of
a PDF page without a text layer) is read by an `OcrEngine` within `timeout_s`; the file's text then has to pass
`plausibility` (enough letters/digits, a high enough mean confidence) or the file fails with the reason, like any
other unreadable file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from smolit.contracts import StepChecks
from smolit.infra.ocr import OcrEngine, OcrLine, RapidOcrEngine, to_text
from smolit.infra.settings import Settings

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


class OcrFailed(ValueError):
    """OCR gave no usable text for a file (timeout, engine error, or implausible output)."""

    def __init__(self, message: str, confidence: float | None = None) -> None:
        super().__init__(message)
        self.confidence = confidence


class OcrBudgetSpent(OcrFailed):
    """The caller's time budget ran out before or during the reading (not a failure of the model)."""


@dataclass(frozen=True)
class OcrPolicy:
    timeout_s: float = 60.0
    """Longest OCR of one image; the file fails when it is exceeded."""
    min_chars: int = 12
    """Fewest letters and digits a file's OCR text must have."""
    min_confidence: float = 0.7
    """Lowest mean recogniser confidence, weighted by each box's characters."""

    def with_checks(self, checks: StepChecks) -> OcrPolicy:
        """This policy with the thresholds a card declares (`pipeline.checks.ocr`) in place of the settings'."""
        return replace(
            self,
            min_chars=checks.min_chars if checks.min_chars is not None else self.min_chars,
            min_confidence=checks.min_confidence if checks.min_confidence is not None else self.min_confidence,
        )


@dataclass(frozen=True)
class OcrText:
    """What OCR read from one file."""

    text: str
    """All images' text, one blank-line separated block per image that had any."""
    per_image: tuple[str, ...]
    """Text of each image, in order (empty where nothing was read)."""
    chars: int
    """Letters and digits recognised."""
    mean_confidence: float
    images: int
    seconds: float
    model: str | None = None
    """The candidate that read it, when a selector chose among several."""
    selection: dict[str, Any] | None = None
    """Why that candidate: the page features and each candidate's score."""

    def metadata(self, model: str) -> dict[str, Any]:
        extra = {"selection": self.selection} if self.selection else {}
        return extra | {
            "model": self.model or model,
            "chars": self.chars,
            "mean_confidence": round(self.mean_confidence, 4),
            "images": self.images,
            "seconds": round(self.seconds, 3),
        }


def _alnum(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def plausibility(lines: Sequence[OcrLine], policy: OcrPolicy) -> tuple[int, float, str | None]:
    """(characters, mean confidence, reason the output is not plausible or None)."""
    chars = sum(_alnum(line.text) for line in lines)
    weight = sum(_alnum(line.text) * line.confidence for line in lines)
    confidence = weight / chars if chars else 0.0
    if chars < policy.min_chars:
        return chars, confidence, f"OCR found too little text ({chars} letters/digits, need {policy.min_chars})"
    if confidence < policy.min_confidence:
        return (
            chars,
            confidence,
            f"OCR output is implausible (mean confidence {confidence:.2f} < {policy.min_confidence})",
        )
    return chars, confidence, None


class OcrStep:
    """Runs an OCR engine with a per-image timeout; the engine is built on first use (text-only ingests never
    load the model).

    A timed-out call cannot be interrupted inside ONNX Runtime: its worker thread is abandoned (it finishes in the
    background) and the next image gets a fresh worker.
    """

    def __init__(self, engine_factory: Callable[[], OcrEngine], policy: OcrPolicy = OcrPolicy()) -> None:
        self._factory = engine_factory
        self._engine: OcrEngine | None = None
        self.policy = policy
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ocr")

    @property
    def engine(self) -> OcrEngine:
        with self._lock:
            if self._engine is None:
                self._engine = self._factory()
            return self._engine

    @property
    def model(self) -> str:
        return self.engine.name

    def read_images(self, images: Sequence[Image], fmt: str = "png", source: str | None = None) -> OcrText:
        """Text of the images of one file (pages in order, separated by blank lines). Raises OcrFailed.

        `fmt` and `source` describe the file for steps that select a model per input."""
        try:
            engine = self.engine
        except Exception as exc:  # e.g. OpenCV without libGL.so.1: every image fails with the reason, text goes on
            raise OcrFailed(f"OCR model unavailable: {type(exc).__name__}: {exc}") from exc
        return self.read_with(engine, images)

    def read_with(
        self, engine: OcrEngine, images: Sequence[Image], budget_s: float | None = None, policy: OcrPolicy | None = None
    ) -> OcrText:
        """`engine` (e.g. a model manager's current OCR model) on the images, with this step's timeout per image
        (and at most `budget_s` for all of them) and plausibility check (`policy`'s thresholds when given, e.g. a
        card's). Raises OcrFailed."""
        started = time.perf_counter()
        pages: list[list[OcrLine]] = []
        for number, image in enumerate(images, start=1):
            timeout = self.policy.timeout_s
            if budget_s is not None:
                timeout = min(timeout, budget_s - (time.perf_counter() - started))
                if timeout <= 0:
                    raise OcrBudgetSpent(f"OCR budget of {budget_s:.3g} s spent before image {number}")
            future = self._pool.submit(engine.read, image)
            try:
                pages.append(future.result(timeout=timeout))
            except FutureTimeout:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="ocr")
                if timeout < self.policy.timeout_s:  # cut short by the budget: not the model's failure
                    raise OcrBudgetSpent(f"OCR budget of {budget_s:.3g} s spent during image {number}") from None
                raise OcrFailed(f"OCR timed out after {timeout:.3g} s (image {number})") from None
            except Exception as exc:  # the engine's own errors (bad pixel data, ONNX Runtime) fail this file only
                raise OcrFailed(f"OCR failed on image {number}: {type(exc).__name__}: {exc}") from exc
        lines = [line for page in pages for line in page]
        chars, confidence, problem = plausibility(lines, policy or self.policy)
        if problem:
            raise OcrFailed(problem, confidence)
        texts = tuple(to_text(page) for page in pages)
        text = "\n\n".join(t for t in texts if t)
        return OcrText(text, texts, chars, confidence, len(images), time.perf_counter() - started)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def build_ocr_step(settings: Settings) -> OcrStep:
    """The offline PP-OCRv4 step with the policy and thread count of the settings (model loaded on first image)."""
    policy = OcrPolicy(settings.ocr_timeout_s, settings.ocr_min_chars, settings.ocr_min_confidence)
    return OcrStep(lambda: RapidOcrEngine(threads=settings.threads), policy)


class OcrLoader:
    """Model-manager loader for `task_type: ocr` versions: the version's `variant` tag (else its registered name)
    picks the configuration; every configuration shares one loaded set of PP-OCRv4 sessions."""

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._base: RapidOcrEngine | None = None
        self._lock = threading.Lock()

    def __call__(self, name: str, version: str, tags: Mapping[str, str]) -> OcrEngine:
        from smolit.infra.ocr import OCR_VARIANTS

        key = tags.get("variant") or name
        variant = OCR_VARIANTS.get(key)
        if variant is None:
            raise OcrFailed(f"{name} version {version} names OCR configuration {key!r}; known: {sorted(OCR_VARIANTS)}")
        with self._lock:
            if self._base is None:
                self._base = RapidOcrEngine(threads=self._threads)
            return RapidOcrEngine(variant=variant, shared=self._base)
