"""`smolit bench pipelines`: per-step latency and accuracy of the agent model pipelines on generated invoices.

Invoices are drawn from a seeded generator (vendor, number, date, line items, VAT, total) and rendered with
Pillow in varying fonts, sizes, grey levels, slight rotation and pixel noise, so the ground truth is known. The
`ocr` step's engine (PP-OCRv4, as built for ingestion) reads each image; the embedding step embeds the OCR text.
Reported: OCR latency per image (p50/p95), character error rate (with and without whitespace: the recogniser
often drops spaces), the share of invoices whose total amount is extracted exactly from the OCR text, the share of
images that pass the plausibility check, the share whose amount has the right digits (separators aside: the
recogniser sometimes reads a thousands comma as a dot), and embedding latency per document.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smolit.infra.settings import Settings

from .entity_docs import COMPANIES

if TYPE_CHECKING:
    from PIL.Image import Image
    from PIL.ImageFont import FreeTypeFont, ImageFont

_VENDORS = COMPANIES[:6]
_ITEMS = (
    "Printer paper A4",
    "Toner cartridge",
    "Desk chair",
    "Server maintenance",
    "Cleaning service",
    "Freight charges",
    "Software licence",
    "Coffee beans 1 kg",
)
_CURRENCIES = ("EUR", "USD", "GBP", "CHF")
_FONT_FILES = (  # Debian's fonts-dejavu / fonts-liberation, used when present; Pillow's own font always
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
)
_TOTAL = re.compile(r"total\s*due\s*:?\s*(?:[A-Z]{3})?\s*([0-9][0-9,.]*[.,][0-9]{2})", re.IGNORECASE)


def money(cents: int) -> str:
    return f"{cents // 100:,}.{cents % 100:02d}"


@dataclass(frozen=True)
class Invoice:
    vendor: str
    number: str
    date: str
    currency: str
    items: tuple[tuple[str, int, int], ...]
    """(description, quantity, line amount in cents)."""
    vat_percent: int

    @property
    def net_cents(self) -> int:
        return sum(amount for _, _, amount in self.items)

    @property
    def vat_cents(self) -> int:
        return round(self.net_cents * self.vat_percent / 100)

    @property
    def total(self) -> str:
        """The amount due as printed, e.g. `1,284.50`."""
        return money(self.net_cents + self.vat_cents)

    def lines(self) -> list[str]:
        """The printed text, one entry per line (the OCR ground truth)."""
        return [
            self.vendor,
            f"Invoice number: {self.number}",
            f"Date: {self.date}",
            *(f"{desc} x {qty}   {self.currency} {money(cents)}" for desc, qty, cents in self.items),
            f"VAT {self.vat_percent}%   {self.currency} {money(self.vat_cents)}",
            f"Total due: {self.currency} {self.total}",
        ]


def random_invoice(rng: random.Random) -> Invoice:
    items = tuple((rng.choice(_ITEMS), rng.randint(1, 20), rng.randint(500, 250_000)) for _ in range(rng.randint(1, 4)))
    return Invoice(
        vendor=rng.choice(_VENDORS),
        number=f"INV-{rng.randint(2020, 2026)}-{rng.randint(1, 9999):04d}",
        date=f"{rng.randint(2020, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        currency=rng.choice(_CURRENCIES),
        items=items,
        vat_percent=rng.choice((0, 7, 10, 19, 20)),
    )


def _font(path: str | None, size: int) -> FreeTypeFont | ImageFont:
    from PIL import ImageFont

    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def available_fonts() -> list[str | None]:
    """Pillow's built-in font (None) plus the system TrueType fonts found on this machine."""
    return [None, *(f for f in _FONT_FILES if Path(f).is_file())]


def render(
    invoice: Invoice,
    *,
    font: str | None = None,
    size: int = 28,
    noise: float = 0.0,
    rotate: float = 0.0,
    ink: int = 0,
    seed: int = 0,
) -> Image:
    """The invoice as a white scanned-looking page: `noise` is the std of Gaussian pixel noise (0-255 scale),
    `rotate` degrees of skew, `ink` the grey level of the text (0 = black)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    lines = invoice.lines()
    face = _font(font, size)
    step = int(size * 1.9)
    width = max(int(face.getlength(line)) for line in lines) + 2 * size + 40
    page = PILImage.new("L", (max(width, 600), step * len(lines) + 2 * size + 40), 255)
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        draw.text((size + 20, size + 20 + i * step), line, fill=ink, font=face)
    if rotate:
        page = page.rotate(rotate, expand=True, fillcolor=255, resample=PILImage.Resampling.BICUBIC)
    if noise:
        pixels = np.asarray(page, dtype=np.float32)
        pixels += np.random.default_rng(seed).normal(0, noise, pixels.shape)
        page = PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return page.convert("RGB")


def extract_total(text: str) -> str | None:
    """The amount after `Total due` in OCR text (spaces may be missing), e.g. `1,284.50`."""
    found = _TOTAL.search(text)
    return found.group(1) if found else None


def digits(amount: str | None) -> str:
    return "".join(ch for ch in amount or "" if ch.isdigit())


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(truth: str, read: str) -> float:
    """Character error rate: edit distance / length of the truth."""
    return edit_distance(truth, read) / max(1, len(truth))


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def run_pipelines_bench(
    settings: Settings, images: int = 20, seed: int = 7, on_step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """OCR and embedding latency and OCR accuracy on `images` generated invoices (seeded)."""
    from smolit.agents import build_ocr_step, plausibility
    from smolit.infra.embedder import OnnxMiniLMEmbedder
    from smolit.infra.ocr import to_text

    rng = random.Random(seed)
    fonts = available_fonts()
    ocr = build_ocr_step(settings)
    started = time.perf_counter()
    engine = ocr.engine  # loads the model outside the timed loop
    load_s = time.perf_counter() - started
    embedder = OnnxMiniLMEmbedder(threads=settings.threads)
    embedder.embed(["warm-up"])
    ocr_ms: list[float] = []
    embed_ms: list[float] = []
    cers: list[float] = []
    cers_nospace: list[float] = []
    exact = same_digits = passed = 0
    for i in range(images):
        invoice = random_invoice(rng)
        options = {
            "font": fonts[i % len(fonts)],
            "size": rng.choice((16, 20, 24, 28, 34)),
            "noise": rng.choice((0.0, 12.0, 24.0, 40.0)),
            "rotate": rng.uniform(-1.5, 1.5),
            "ink": rng.choice((0, 40, 80)),
            "seed": seed * 1000 + i,
        }
        image = render(invoice, **options)  # type: ignore[arg-type]
        truth = "\n".join(invoice.lines())
        t0 = time.perf_counter()
        lines = engine.read(image)
        text = to_text(lines)
        ocr_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        embedder.embed([text])
        embed_ms.append((time.perf_counter() - t0) * 1000)
        passed += plausibility(lines, ocr.policy)[2] is None
        cers.append(cer(truth, text))
        cers_nospace.append(cer("".join(truth.split()), "".join(text.split())))
        amount = extract_total(text)
        found = amount == invoice.total
        exact += found
        same_digits += digits(amount) == digits(invoice.total)
        if on_step:
            on_step(f"{i + 1}/{images}: cer {cers[-1]:.3f}, total {'ok' if found else 'missed'}")
    ocr.close()
    return {
        "images": images,
        "seed": seed,
        "threads": settings.threads,
        "fonts": [Path(f).stem if f else "pillow-default" for f in fonts],
        "ocr_model_load_s": round(load_s, 2),
        "ocr_ms_per_image": {"p50": _percentile(ocr_ms, 50), "p95": _percentile(ocr_ms, 95)},
        "embed_ms_per_document": {"p50": _percentile(embed_ms, 50), "p95": _percentile(embed_ms, 95)},
        "ocr_cer": round(float(np.mean(cers)), 4),
        "ocr_cer_ignoring_spaces": round(float(np.mean(cers_nospace)), 4),
        "amount_exact_rate": round(exact / images, 4),
        "amount_digits_rate": round(same_digits / images, 4),
        "plausibility_pass_rate": round(passed / images, 4),
    }


def record_metrics(settings: Settings, result: dict[str, Any]) -> dict[str, str]:
    """Log the measured numbers on the registered OCR, OCR candidate and embedding versions (shown by
    `smolit models list`)."""
    from smolit.infra.registry import open_registry

    from .models import EMBEDDER_MODEL, OCR_MODEL, register_shipped_models

    registry = open_registry(settings.tracking_uri, settings.data_dir, "smolit-models")
    versions = register_shipped_models(registry)
    if "ocr_cer" in result:
        registry.log_metrics(
            OCR_MODEL,
            versions[OCR_MODEL],
            {
                "cer": result["ocr_cer"],
                "cer_ignoring_spaces": result["ocr_cer_ignoring_spaces"],
                "amount_exact_rate": result["amount_exact_rate"],
                "p50_ms": result["ocr_ms_per_image"]["p50"],
                "p95_ms": result["ocr_ms_per_image"]["p95"],
            },
        )
        registry.log_metrics(
            EMBEDDER_MODEL,
            versions[EMBEDDER_MODEL],
            {"p50_ms_per_document": result["embed_ms_per_document"]["p50"]},
        )
    # The selection part's mixed-difficulty set is another data set: its numbers get their own metric names.
    for name, summary in result.get("selection", {}).get("per_candidate", {}).items():
        registry.log_metrics(
            name,
            versions[name],
            {
                "mixed_amount_exact_rate": summary["amount_exact_rate"],
                "mixed_cer": summary["cer"],
                "mixed_ms_per_image": summary["ms_per_image"],
            },
        )
    # Entity extraction: each candidate's field accuracy and latency on the generated invoices and contracts.
    for name, summary in result.get("entities", {}).get("per_candidate", {}).items():
        registry.log_metrics(
            name,
            versions[name],
            {
                "field_accuracy": summary["field_accuracy"],
                "document_exact_rate": summary["document_exact_rate"],
                "p50_ms": summary["ms_per_document"]["p50"],
                "p95_ms": summary["ms_per_document"]["p95"],
            },
        )
    return versions
