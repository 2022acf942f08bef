"""The `selection` part of `smolit bench pipelines`: OCR model selection against always the first candidate.

Seeded invoices of mixed difficulty (a third upright with normal print, a third upside-down scans, a third small
print) are read by every candidate once; the strategies are then compared on the same readings:
- `first`: always the card's first candidate;
- `selector`: `agents.selection.select` with fit, description similarity (MiniLM) and the model memory, learning
  online: it only sees the validation outcome (plausibility, confidence) of the candidate it chose, image by image,
  as ingestion does;
- `selector_no_memory`: fit and similarity only;
- `selector_with_fallback` (bench only, not in ingestion yet): when the chosen reading fails validation, the
  runner-up candidate reads the page too and its reading is kept if it passes (latency: both);
- `oracle`: the best candidate per image in hindsight (exact amount, then lowest CER), an upper bound.
Accuracy is the share of invoices whose total amount is read exactly / with the right digits, and mean CER;
latency is the mean OCR time per image of the chosen candidates (plus feature and selection time for selectors).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smolit.infra.settings import Settings

from .bench_pipelines import available_fonts, cer, digits, extract_total, random_invoice, render

DEFAULT_CANDIDATES = ("smolit-ocr-fast", "smolit-ocr", "smolit-ocr-upscale")
KINDS = ("plain", "upside-down", "small-print")


def mixed_pages(images: int, seed: int) -> list[tuple[str, Any, Any]]:
    """(kind, invoice, image) for `images` seeded invoices, the kinds in equal shares and shuffled."""
    rng = random.Random(seed)
    fonts = available_fonts()
    kinds = [KINDS[i % len(KINDS)] for i in range(images)]
    rng.shuffle(kinds)
    pages = []
    for i, kind in enumerate(kinds):
        invoice = random_invoice(rng)
        size = rng.choice((9, 10, 11)) if kind == "small-print" else rng.choice((18, 22, 26, 30))
        rotate = rng.uniform(-1.5, 1.5) + (180.0 if kind == "upside-down" else 0.0)
        image = render(
            invoice,
            font=fonts[i % len(fonts)],
            size=size,
            noise=rng.choice((0.0, 12.0, 24.0)),
            rotate=rotate,
            ink=rng.choice((0, 40, 80)),
            seed=seed * 1000 + i,
        )
        pages.append((kind, invoice, image))
    return pages


def _summary(rows: Sequence[dict[str, Any]], extra_ms: Sequence[float] = ()) -> dict[str, Any]:
    n = len(rows)
    ms = [r["ms"] for r in rows]
    total_ms = float(np.mean(ms)) + (float(np.mean(extra_ms)) if extra_ms else 0.0)
    picked: dict[str, int] = {}
    for r in rows:
        picked[r["model"]] = picked.get(r["model"], 0) + 1
    return {
        "amount_exact_rate": round(sum(r["exact"] for r in rows) / n, 4),
        "amount_digits_rate": round(sum(r["digits"] for r in rows) / n, 4),
        "cer": round(float(np.mean([r["cer"] for r in rows])), 4),
        "ms_per_image": round(total_ms, 1),
        "picked": dict(sorted(picked.items())),
    }


def run_selection_bench(
    settings: Settings,
    images: int = 12,
    seed: int = 11,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from smolit.agents import plausibility
    from smolit.agents.ocr import OcrPolicy
    from smolit.agents.ocr_selection import candidate, output_checks
    from smolit.agents.selection import ModelMemory, page_features, select
    from smolit.contracts import ModelOutcomeRecorded
    from smolit.infra.embedder import OnnxMiniLMEmbedder
    from smolit.infra.ocr import OCR_VARIANTS, RapidOcrEngine, to_text

    policy = OcrPolicy(settings.ocr_timeout_s, settings.ocr_min_chars, settings.ocr_min_confidence)
    base = RapidOcrEngine(threads=settings.threads)
    engines = {name: RapidOcrEngine(variant=OCR_VARIANTS[name], shared=base) for name in candidates}
    cands = [candidate(OCR_VARIANTS[name]) for name in candidates]
    embedder = OnnxMiniLMEmbedder(threads=settings.threads)
    vectors = dict(zip(candidates, embedder.embed([c.description for c in cands]), strict=True))
    pages = mixed_pages(images, seed)

    readings: list[dict[str, dict[str, Any]]] = []  # per image: candidate -> reading
    features = []
    feature_ms: list[float] = []
    for i, (kind, invoice, image) in enumerate(pages):
        t0 = time.perf_counter()
        features.append(page_features(np.asarray(image.convert("L")), "png"))
        feature_ms.append((time.perf_counter() - t0) * 1000)
        truth = "\n".join(invoice.lines())
        per: dict[str, dict[str, Any]] = {}
        for name, engine in engines.items():
            t0 = time.perf_counter()
            lines = engine.read(image)
            ms = (time.perf_counter() - t0) * 1000
            text = to_text(lines)
            _, confidence, problem = plausibility(lines, policy)
            checks = output_checks(text)
            amount = extract_total(text)
            per[name] = {
                "model": name,
                "ms": ms,
                "exact": amount == invoice.total,
                "digits": digits(amount) == digits(invoice.total),
                "cer": cer(truth, text),
                "success": problem is None and all(checks.values()),
                "confidence": confidence,
            }
        readings.append(per)
        if on_step:
            marks = ", ".join(f"{n}: {'ok' if r['exact'] else 'missed'}" for n, r in per.items())
            on_step(f"{i + 1}/{images} {kind} ({features[-1].font} print, {features[-1].orientation}): {marks}")

    def run_selector(use_memory: bool, fallback: bool = False) -> tuple[list[dict[str, Any]], list[float]]:
        memory = ModelMemory() if use_memory else None
        chosen, select_ms = [], []

        def observe(model: str, feats: Any, reading: dict[str, Any]) -> None:
            if memory is not None:  # only readings that ran are observed, as at ingestion
                event = ModelOutcomeRecorded(
                    correlation_id=uuid.uuid4(),
                    producer="bench",
                    model=model,
                    features=feats.buckets(),
                    success=reading["success"],
                    confidence=reading["confidence"],
                )
                memory.apply([event])

        for feats, per in zip(features, readings, strict=True):
            t0 = time.perf_counter()
            task_vector = embedder.embed([feats.describe("finance")])[0]
            choice = select(cands, feats, task_vector=task_vector, candidate_vectors=vectors, memory=memory)
            select_ms.append((time.perf_counter() - t0) * 1000)
            reading = per[choice.model]
            observe(choice.model, feats, reading)
            if fallback and not reading["success"]:  # failed validation: the next-best candidate reads it too
                runner_up = max((n for n in choice.scores if n != choice.model), key=lambda n: choice.scores[n])
                second = per[runner_up]
                observe(runner_up, feats, second)
                reading = (second if second["success"] else reading) | {"ms": reading["ms"] + second["ms"]}
            chosen.append(reading)
        return chosen, select_ms

    first = [per[candidates[0]] for per in readings]
    selected, select_ms = run_selector(True)
    no_memory, no_memory_ms = run_selector(False)
    cascade, cascade_ms = run_selector(True, fallback=True)
    oracle = [max(per.values(), key=lambda r: (r["exact"], r["digits"], -r["cer"])) for per in readings]

    def exact_rate(name: str, kind: str) -> float:
        hits = [per[name]["exact"] for per, page in zip(readings, pages, strict=True) if page[0] == kind]
        return round(float(np.mean(hits)), 4)

    summaries = {
        "first": _summary(first),
        "selector": _summary(selected, [a + b for a, b in zip(feature_ms, select_ms, strict=True)]),
        "selector_no_memory": _summary(no_memory, [a + b for a, b in zip(feature_ms, no_memory_ms, strict=True)]),
        "selector_with_fallback": _summary(cascade, [a + b for a, b in zip(feature_ms, cascade_ms, strict=True)]),
        "oracle": _summary(oracle),
    }
    result: dict[str, Any] = {
        "images": images,
        "seed": seed,
        "kinds": {kind: sum(k == kind for k, _, _ in pages) for kind in KINDS},
        "candidates": list(candidates),
        "features_detected": {
            "upside_down_correct": sum(
                (f.orientation == "upside-down") == (k == "upside-down")
                for f, (k, _, _) in zip(features, pages, strict=True)
            ),
            "small_print_correct": sum(
                (f.font == "small") == (k == "small-print") for f, (k, _, _) in zip(features, pages, strict=True)
            ),
        },
        "per_candidate": {name: _summary([per[name] for per in readings]) for name in candidates},
        "exact_rate_per_kind": {
            kind: {name: exact_rate(name, kind) for name in candidates}
            for kind in KINDS
            if any(k == kind for k, _, _ in pages)
        },
        "validation_agrees_with_truth": round(
            float(np.mean([r["success"] == r["exact"] for per in readings for r in per.values()])), 4
        ),
        **summaries,
        "selector_trace": [  # page by page: what the selector chose and what it learned from
            {"kind": page[0], "model": r["model"], "validated": r["success"], "exact": r["exact"]}
            for page, r in zip(pages, selected, strict=True)
        ],
        "gain_exact_over_first": round(
            summaries["selector"]["amount_exact_rate"] - summaries["first"]["amount_exact_rate"], 4
        ),
        "gain_digits_over_first": round(
            summaries["selector"]["amount_digits_rate"] - summaries["first"]["amount_digits_rate"], 4
        ),
    }
    return result
