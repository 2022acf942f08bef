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
from typing import TYPE_CHECKING, Protocol

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


class RapidOcrEngine:
    """PP-OCRv4 on ONNX Runtime through `rapidocr-onnxruntime`; one intra-op pool of `threads`."""

    name = "ppocr-v4-onnx"

    def __init__(self, threads: int = 1) -> None:
        from rapidocr_onnxruntime import RapidOCR

        # One pool per process (ARCHITECTURE §5b): the library default (-1) takes every core.
        self._ocr = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)

    def read(self, image: Image) -> list[OcrLine]:
        rgb = np.asarray(image.convert("RGB"))
        result, _ = self._ocr(np.ascontiguousarray(rgb[:, :, ::-1]))  # the library expects OpenCV's BGR order
        lines = []
        for box, text, score in result or []:
            ys = [float(point[1]) for point in box]
            xs = [float(point[0]) for point in box]
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
