"""The `entities` part of `smolit bench pipelines`: field accuracy and latency of each entity-extraction candidate,
of model selection and of the per-field vote, on seeded generated invoices and contracts (`entity_docs`).

Every candidate reads every document once; the strategies are then compared on the same readings:
- `first`: always the first candidate (the card's default);
- `selector`: `agents.selection.select` with fit (layout, currency and date style against each candidate's
  declaration), description similarity (MiniLM) and the model memory, learning online from the validation outcome
  (`entity_fields.check` passed; confidence = share of fields found) of the candidate it chose, document by
  document, as ingestion does;
- `selector_no_memory`: fit and similarity only;
- `vote`: every candidate runs, per-field vote weighted by the model memory (which sees every candidate's outcome);
  `majority`: the same vote with equal weights; latency is the sum of the candidates';
- `best_single`: the candidate with the best field accuracy in hindsight.
Field accuracy is exact match per field after normalisation (dates ISO, amounts `1284.50`, names as printed).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from smolit.infra.settings import Settings

from .entity_docs import SampleDocument, sample_documents


def _p(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def _score(doc: SampleDocument, fields: dict[str, Any]) -> dict[str, bool]:
    return {name: fields.get(name) == truth for name, truth in doc.truth.items()}


def _summary(rows: Sequence[dict[str, Any]], docs: Sequence[SampleDocument]) -> dict[str, Any]:
    per_field: dict[str, list[bool]] = {}
    per_kind: dict[str, list[bool]] = {}
    for row, doc in zip(rows, docs, strict=True):
        for name, ok in row["hits"].items():
            per_field.setdefault(name, []).append(ok)
            per_kind.setdefault(doc.kind, []).append(ok)
    hits = [ok for row in rows for ok in row["hits"].values()]
    ms = [row["ms"] for row in rows]
    picked: dict[str, int] = {}
    for row in rows:
        picked[row["model"]] = picked.get(row["model"], 0) + 1
    return {
        "field_accuracy": round(float(np.mean(hits)), 4),
        "document_exact_rate": round(float(np.mean([all(r["hits"].values()) for r in rows])), 4),
        "check_pass_rate": round(float(np.mean([r["passed"] for r in rows])), 4),
        "field_accuracy_per_kind": {k: round(float(np.mean(v)), 4) for k, v in sorted(per_kind.items())},
        "field_accuracy_per_field": {k: round(float(np.mean(v)), 4) for k, v in per_field.items()},
        "ms_per_document": {"p50": _p(ms, 50), "p95": _p(ms, 95), "mean": round(float(np.mean(ms)), 2)},
        "picked": dict(sorted(picked.items())),
    }


def run_entities_bench(
    settings: Settings,
    documents: int = 60,
    seed: int = 5,
    candidates: Sequence[str] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from smolit.agents.entities import TextCandidate, build_extractor
    from smolit.agents.entity_fields import check, coverage, text_features, vote
    from smolit.agents.selection import ModelMemory, SelectionWeights, select
    from smolit.contracts import STEP_CANDIDATES, ModelOutcomeRecorded
    from smolit.infra.embedder import OnnxMiniLMEmbedder
    from smolit.infra.ner_models import NER_VARIANTS

    names = tuple(candidates or STEP_CANDIDATES["entities"])
    docs = sample_documents(documents, seed)
    extractors = {}
    load_s = {}
    for name in names:
        t0 = time.perf_counter()
        extractors[name] = build_extractor(name)
        extractors[name].extract("Invoice number: 1\nTotal due: EUR 1.00", "invoice")  # loads spaCy, warms up
        load_s[name] = round(time.perf_counter() - t0, 2)
    cands = [TextCandidate.of(NER_VARIANTS[n]) for n in names]
    embedder = OnnxMiniLMEmbedder(threads=settings.threads)
    vectors = dict(zip(names, embedder.embed([c.description for c in cands]), strict=True))

    readings: list[dict[str, dict[str, Any]]] = []
    features, feature_ms = [], []
    for i, doc in enumerate(docs):
        t0 = time.perf_counter()
        features.append(text_features(doc.text))
        feature_ms.append((time.perf_counter() - t0) * 1000)
        per: dict[str, dict[str, Any]] = {}
        for name, extractor in extractors.items():
            t0 = time.perf_counter()
            result = extractor.extract(doc.text, features[-1].kind)
            ms = (time.perf_counter() - t0) * 1000
            checks = check(result)
            per[name] = {
                "model": name,
                "ms": ms,
                "result": result,
                "hits": _score(doc, result.fields),
                "passed": all(checks.values()),
                "confidence": coverage(result),
            }
        readings.append(per)
        if on_step:
            marks = ", ".join(f"{n}: {np.mean(list(r['hits'].values())):.2f}" for n, r in per.items())
            on_step(f"{i + 1}/{len(docs)} {doc.kind}/{doc.layout}: {marks}")

    def observe(memory: ModelMemory, name: str, feats: Any, reading: dict[str, Any]) -> None:
        memory.apply(
            [
                ModelOutcomeRecorded(
                    correlation_id=uuid.uuid4(),
                    producer="bench",
                    model=name,
                    step="entities",
                    features=feats.buckets(),
                    success=reading["passed"],
                    confidence=reading["confidence"],
                )
            ]
        )

    def run_selector(use_memory: bool) -> tuple[list[dict[str, Any]], list[float]]:
        memory = ModelMemory() if use_memory else None
        chosen, extra = [], []
        for feats, per, f_ms in zip(features, readings, feature_ms, strict=True):
            t0 = time.perf_counter()
            task = embedder.embed([feats.describe("finance")])[0]
            choice = select(cands, feats, step="entities", task_vector=task, candidate_vectors=vectors, memory=memory)
            extra.append(f_ms + (time.perf_counter() - t0) * 1000)
            reading = per[choice.model]
            if memory is not None:
                observe(memory, choice.model, feats, reading)
            chosen.append(reading | {"ms": reading["ms"] + extra[-1]})
        return chosen, extra

    def run_vote(weighted: bool) -> list[dict[str, Any]]:
        memory, half = ModelMemory(), SelectionWeights().evidence
        rows = []
        for doc, feats, per in zip(docs, features, readings, strict=True):
            weights = {}
            if weighted:
                for name in names:
                    value, evidence = memory.estimate(name, "entities", feats.buckets())
                    weights[name] = 0.5 + evidence / (evidence + half) * (value - 0.5)
            t0 = time.perf_counter()
            result = vote([per[n]["result"] for n in names], weights or None)
            vote_ms = (time.perf_counter() - t0) * 1000
            rows.append(
                {
                    "model": "vote" if weighted else "majority",
                    "ms": sum(per[n]["ms"] for n in names) + vote_ms,
                    "hits": _score(doc, result.fields),
                    "passed": all(check(result).values()),
                }
            )
            for name in names:  # every candidate ran: the memory sees every outcome
                observe(memory, name, feats, per[name])
        return rows

    per_candidate = {name: _summary([per[name] for per in readings], docs) for name in names}
    best = max(names, key=lambda n: per_candidate[n]["field_accuracy"])
    selected, _ = run_selector(True)
    summaries = {
        "first": per_candidate[names[0]] | {"model": names[0]},
        "selector": _summary(selected, docs),
        "selector_no_memory": _summary(run_selector(False)[0], docs),
        "vote": _summary(run_vote(True), docs),
        "majority": _summary(run_vote(False), docs),
        "best_single": per_candidate[best] | {"model": best},
    }
    passed = [r["passed"] for per in readings for r in per.values()]
    right = [all(r["hits"].values()) for per in readings for r in per.values()]
    return {
        "documents": len(docs),
        "seed": seed,
        "kinds": {k: sum(d.kind == k for d in docs) for k in ("invoice", "contract")},
        "layouts": sorted({f"{d.kind}/{d.layout}" for d in docs}),
        "candidates": list(names),
        "load_s": load_s,
        "per_candidate": per_candidate,
        "selection": summaries,
        "check_agrees_with_truth": round(float(np.mean([p == r for p, r in zip(passed, right, strict=True)])), 4),
        "gain_over_first": {
            key: round(summaries[key]["field_accuracy"] - summaries["first"]["field_accuracy"], 4)
            for key in ("selector", "selector_no_memory", "vote", "majority", "best_single")
        },
        "selector_trace": [
            {"layout": f"{d.kind}/{d.layout}", "model": r["model"], "passed": r["passed"]}
            for d, r in zip(docs, selected, strict=True)
        ],
    }
