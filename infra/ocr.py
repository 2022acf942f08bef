"""The OCR port and its offline adapter: an image in, recognised text lines with confidences out.

`RapidOcrEngine` runs PP-OCRv4 (text detection, orientation classification, recognition) on ONNX Runtime. The
three ONNX models ship inside the `rapidocr-onnxruntime` wheel (~16 MB, Apache-2.0), so nothing is downloaded.
The recogniser is the multilingual Chinese/English PP-OCRv4 model: it reads Latin text well but often drops the
space between words, so callers should not depend on exact word spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image

OCR_PACKAGE = "rapidocr-onnxruntime"


@dataclass(frozen=True)
class OcrLine:
    """One recognised text box, in page coordinates (pixels)."""

    text: str
    confidence: float
    top: float
    bottom: float
    left: float


class OcrEngine(Protocol):
    """Reads the text of one image; lines come back in reading order (top to bottom, left to right)."""

    name: str

    def read(self, image: Image) -> list[OcrLine]: ...


def ocr_model_files() -> dict[str, Path]:
    """The shipped det/cls/rec ONNX files by role (for the model registry's digest)."""
    folder = Path(str(resources.files("rapidocr_onnxruntime").joinpath("models")))
    found = {p.name: p for p in folder.glob("*.onnx")}
    roles = {"det": "_det_", "cls": "_cls_", "rec": "_rec_"}
    return {role: next(p for name, p in sorted(found.items()) if key in name) for role, key in roles.items()}


def ocr_package_version() -> str:
    return metadata.version(OCR_PACKAGE)


@dataclass(frozen=True)
class OcrVariant:
    """One OCR configuration registered as its own candidate model: the same PP-OCRv4 weights run differently."""

    name: str
    """Registered model name (`smolit models list`)."""
    description: str
    """What it is good at, in words (the selector embeds it and compares it with the task's description)."""
    use_cls: bool = True
    """Run the text-angle classifier (0/180 degrees) on every box: needed for upside-down scans, costs time."""
    scale: float = 1.0
    """Upscale the page by this factor (Lanczos) before detection and recognition: small print gets readable."""
    box_thresh: float = 0.5
    """Detector box score threshold (lower finds fainter text, and more noise)."""
    unclip_ratio: float = 1.6
    """How far detected boxes are grown before recognition."""
    font_px: tuple[float, float] = (0.0, 1e9)
    """Estimated text height (pixels) the variant is meant for."""
    orientations: frozenset[str] = frozenset({"upright"})
    """Page orientations it reads (`upright`, `upside-down`)."""
    contrast: frozenset[str] = frozenset({"normal"})
    """Ink contrast it is meant for (`normal`, `faint`)."""


OCR_VARIANTS: dict[str, OcrVariant] = {
    v.name: v
    for v in (
        OcrVariant(
            "smolit-ocr",
            "General scanned document OCR with the text-angle classifier: upright or upside-down pages, "
            "normal print size and contrast.",
            orientations=frozenset({"upright", "upside-down"}),
            font_px=(13.0, 1e9),
        ),
        OcrVariant(
            "smolit-ocr-fast",
            "Fast OCR for clean upright scans with normal size print; no angle classifier, so upside-down or "
            "rotated pages come out as garbage.",
            use_cls=False,
            font_px=(13.0, 1e9),
        ),
        OcrVariant(
            "smolit-ocr-upscale",
            "OCR for small print and fine text: the page is upscaled twice before detection and recognition; "
            "slower, with the angle classifier.",
            scale=2.0,
            font_px=(0.0, 13.0),
            orientations=frozenset({"upright", "upside-down"}),
        ),
        OcrVariant(
            "smolit-ocr-faint",
            "OCR for faint, low-contrast or grey print: a lower detector threshold and wider boxes, with the "
            "angle classifier.",
            box_thresh=0.3,
            unclip_ratio=2.0,
            font_px=(10.0, 1e9),
            orientations=frozenset({"upright", "upside-down"}),
            contrast=frozenset({"normal", "faint"}),
        ),
    )
}
"""The OCR candidates a card may list under `pipeline.candidates.ocr` (`smolit-ocr` is the default step)."""


class RapidOcrEngine:
    """PP-OCRv4 on ONNX Runtime through `rapidocr-onnxruntime`; one intra-op pool of `threads`.

    `variant` picks the configuration; `shared` reuses another engine's loaded models (variants differ only in
    per-call options and pre-processing, so one set of ONNX sessions serves them all).
    """

    def __init__(
        self, threads: int = 1, variant: OcrVariant | None = None, shared: RapidOcrEngine | None = None
    ) -> None:
        self.variant = variant or OCR_VARIANTS["smolit-ocr"]
        self.name = "ppocr-v4-onnx" if self.variant.name == "smolit-ocr" else self.variant.name
        self._ocr: Any
        if shared is not None:
            self._ocr = shared._ocr
            return
        from rapidocr_onnxruntime import RapidOCR

        # One pool per process (ARCHITECTURE §5b): the library default (-1) takes every core.
        self._ocr = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)

    def read(self, image: Image) -> list[OcrLine]:
        v = self.variant
        if v.scale != 1.0:
            from PIL import Image as PILImage

            size = (round(image.width * v.scale), round(image.height * v.scale))
            image = image.resize(size, PILImage.Resampling.LANCZOS)
        rgb = np.asarray(image.convert("RGB"))
        result, _ = self._ocr(  # the library expects OpenCV's BGR order
            np.ascontiguousarray(rgb[:, :, ::-1]),
            use_cls=v.use_cls,
            box_thresh=v.box_thresh,
            unclip_ratio=v.unclip_ratio,
        )
        lines = []
        for box, text, score in result or []:
            ys = [float(point[1]) / v.scale for point in box]
            xs = [float(point[0]) / v.scale for point in box]
            lines.append(OcrLine(str(text), float(score), min(ys), max(ys), min(xs)))
        return [line for row in rows(lines) for line in row]


def rows(lines: list[OcrLine]) -> list[list[OcrLine]]:
    """Boxes grouped into rows (a box whose vertical middle lies inside the row's first box joins it), each row
    left to right, rows top to bottom."""
    grouped: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.top, ln.left)):
        middle = (line.top + line.bottom) / 2
        if grouped and grouped[-1][0].top <= middle <= grouped[-1][0].bottom:
            grouped[-1].append(line)
        else:
            grouped.append([line])
    return [sorted(row, key=lambda ln: ln.left) for row in grouped]


def to_text(lines: list[OcrLine]) -> str:
    """Boxes of one row joined by two spaces (columns stay apart), rows by newlines."""
    return "\n".join("  ".join(line.text for line in row) for row in rows(lines))
