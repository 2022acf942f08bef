"""The sentiment classifier's pure parts: sentence split, fit, scoring, evaluation, payload and event fields."""

from __future__ import annotations

import uuid

import numpy as np
import torch

from smolit.contracts import FeedbackGiven, ModelUse, decode, encode
from smolit.infra.sentiment import SentimentClassifier, SentimentModel, evaluate, fit, sentences, split


def _data(seed: int = 0, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two classes apart along the first axis, in 8 dimensions."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 8))
    x[:, 0] += np.where(labels == 1, 2.0, -2.0)
    return x, labels


def test_sentences_split_and_fall_back_to_the_text() -> None:
    """Sentences split at end punctuation, fragments are dropped, and a text with none scores as itself."""
    assert sentences("Great film, loved it. Ok. The ending was far too long!") == [
        "Great film, loved it.",
        "The ending was far too long!",
    ]
    assert sentences("  bad  ") == ["bad"]


def test_fit_separates_classes_and_is_deterministic() -> None:
    """Logistic regression finds the separating axis; the same data gives the same weights."""
    x, y = _data()
    train, test = split(len(y), seed=3)
    assert len(train) == 140 and len(test) == 60 and set(train).isdisjoint(test)
    model = fit(x[train], y[train])
    again = fit(x[train], y[train])
    assert np.array_equal(model.weights, again.weights)
    assert int(np.argmax(np.abs(model.weights))) == 0
    metrics = evaluate(model, [x[i : i + 1] for i in test], y[test])
    assert metrics["accuracy"] > 0.9 and metrics["macro_f1"] > 0.9
    assert metrics["log_loss"] < 0.3 and 0 <= metrics["ece"] < 0.2 and metrics["holdout_size"] == 60


def test_split_depends_on_the_seed() -> None:
    """Different seeds give different splits, the same seed the same one."""
    assert np.array_equal(split(50, 1)[0], split(50, 1)[0])
    assert not np.array_equal(split(50, 1)[0], split(50, 2)[0])


def test_score_is_the_mean_over_sentences_and_predict_gives_the_label_confidence() -> None:
    """A text's positive probability averages its sentences; a negative label carries 1 - p."""
    model = SentimentModel(np.array([1.0, 0.0]), 0.0, "test")
    sure_negative = np.array([[-5.0, 0.0]])
    mixed = np.array([[-5.0, 0.0], [5.0, 0.0]])
    assert abs(model.score(mixed) - 0.5) < 1e-9
    prediction = model.predict(sure_negative)
    assert prediction.label == "negative" and prediction.confidence > 0.99


def test_payload_round_trips_through_torch_weights_only(tmp_path) -> None:
    """The registry stores plain values: torch.load(weights_only=True) reads them back into the same model."""
    x, y = _data()
    model = fit(x, y, embedder="onnx-minilm-l6")
    torch.save(model.to_payload(), tmp_path / "model.pt")
    back = SentimentModel.from_payload(torch.load(tmp_path / "model.pt", weights_only=True))
    assert np.allclose(back.weights, model.weights) and back.bias == model.bias and back.embedder == "onnx-minilm-l6"


def test_classifier_embeds_each_sentence_once() -> None:
    """The classifier embeds the comment's sentences in one call and scores them."""
    calls: list[list[str]] = []

    def embed(texts: object) -> np.ndarray:
        calls.append(list(texts))  # type: ignore[call-overload]
        return np.array([[-3.0, 0.0] if "bad" in t else [3.0, 0.0] for t in calls[-1]])

    classifier = SentimentClassifier(SentimentModel(np.array([1.0, 0.0]), 0.0, "test"), embed)
    assert classifier.classify("This was really bad. Truly bad, I mean it.").label == "negative"
    assert calls == [["This was really bad.", "Truly bad, I mean it."]]


def test_feedback_event_records_the_inferring_model_and_old_payloads_decode() -> None:
    """`inferred_by` and `inferred_confidence` round-trip; a payload without them decodes with defaults."""
    event = FeedbackGiven(
        correlation_id=uuid.uuid4(),
        producer="gateway",
        rating=-1,
        scale="thumbs",
        comment="useless",
        inferred_by=ModelUse(step="sentiment", name="smolit-sentiment", version="2", alias="champion"),
        inferred_confidence=0.81,
    )
    value, _headers = encode(event)
    back = decode(value)
    assert isinstance(back, FeedbackGiven) and back.inferred_by == event.inferred_by
    old = FeedbackGiven(correlation_id=uuid.uuid4(), producer="gateway", rating=1)
    raw = old.model_dump_json(exclude={"inferred_by", "inferred_confidence"}).encode()
    decoded = decode(raw)
    assert isinstance(decoded, FeedbackGiven) and decoded.inferred_by is None and decoded.inferred_confidence is None


def test_models_list_names_the_gateway_as_the_sentiment_model_user() -> None:
    """`smolit models list` shows the gateway as the user of the model SMOLIT_SENTIMENT_MODEL names."""
    from smolit.infra.settings import Settings
    from smolit.models import users

    assert users({}, Settings())["smolit-sentiment"] == ["gateway (comment-only feedback)"]
    assert users({}, Settings(sentiment_model="mood@challenger"))["mood"] == ["gateway (comment-only feedback)"]
