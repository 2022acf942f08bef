"""The model memory through the real embedded broker: outcomes written as `ModelOutcomeRecorded` events on the
model-outcomes topic are read back into the projection the selector uses, and change its choice."""

from __future__ import annotations

import random
import uuid

import pytest

from smolit.agents.ocr_selection import SelectingOcrStep, load_memory
from smolit.agents.selection import Candidate, PageFeatures, select
from smolit.bench_pipelines import random_invoice, render
from smolit.contracts import ModelOutcomeRecorded, Topic, TopicNames
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.ocr import OcrLine

pytestmark = pytest.mark.integration

SMALL = PageFeatures("png", 600, 200, 9.0, "upright", "normal")
PLAIN = PageFeatures("png", 800, 600, 22.0, "upright", "normal")


def _outcome(model: str, features: PageFeatures, success: bool) -> ModelOutcomeRecorded:
    return ModelOutcomeRecorded(
        correlation_id=uuid.uuid4(),
        producer="test",
        model=model,
        features=features.buckets(),
        success=success,
        confidence=0.9,
    )


def test_outcomes_on_the_topic_steer_the_selector(
    profile: KafkaProfile, topics: TopicNames, producer: EventProducer
) -> None:
    """`a` failed three times on small print and `b` passed: after the events round-trip through the broker the
    selector sends small print to `b` and keeps plain pages on `a`; a redelivered event counts once."""
    a, b = Candidate("a", "x"), Candidate("b", "x")
    topic = topics(Topic.MODEL_OUTCOMES)
    assert load_memory(profile.consumer("r"), topic).outcomes() == 0
    events = [_outcome("a", SMALL, False) for _ in range(3)] + [_outcome("b", SMALL, True) for _ in range(3)]
    events += [_outcome("a", PLAIN, True) for _ in range(2)]
    for event in [*events, events[0]]:
        producer.send(Outgoing(Topic.MODEL_OUTCOMES, event.model, event))
    producer.flush(10)
    memory = load_memory(profile.consumer("r"), topic)
    assert memory.outcomes() == len(events)
    assert select([a, b], SMALL).model == "a"
    assert select([a, b], SMALL, memory=memory).model == "b"
    assert select([a, b], PLAIN, memory=memory).model == "a"


def test_missing_topic_is_an_empty_memory(profile: KafkaProfile) -> None:
    assert load_memory(profile.consumer("r"), f"t{uuid.uuid4().hex[:10]}.model-outcomes.v1").outcomes() == 0


class _Engine:
    name = "fake"

    def __init__(self, confidence: float) -> None:
        self.confidence = confidence

    def read(self, image: object) -> list[OcrLine]:
        return [
            OcrLine("Paper x 2  EUR 1,000.00", self.confidence, 0, 20, 0),
            OcrLine("VAT 20%  EUR 200.00", self.confidence, 30, 50, 0),
            OcrLine("Total due: EUR 1,200.00", self.confidence, 60, 80, 0),
        ]


def test_selecting_step_writes_its_outcomes_to_the_topic(
    profile: KafkaProfile, topics: TopicNames, producer: EventProducer
) -> None:
    """Each file the selecting step reads becomes one outcome event on the topic, with the page features, the
    plausibility/amount checks and the file name; a fresh memory loaded from the topic sees it."""
    step = SelectingOcrStep(
        {"smolit-ocr-fast": lambda: _Engine(0.99), "smolit-ocr": lambda: _Engine(0.99)},
        agent="inv",
        on_outcome=lambda e: producer.send(Outgoing(Topic.MODEL_OUTCOMES, e.model, e)),
    )
    page = render(random_invoice(random.Random(4)), size=24)
    step.read_images([page], "png", "one.png")
    step.read_images([page.rotate(180)], "png", "two.png")
    producer.flush(10)
    step.close()
    memory = load_memory(profile.consumer("r"), topics(Topic.MODEL_OUTCOMES))
    assert memory.outcomes() == 2
    assert (
        memory.estimate(
            "smolit-ocr-fast",
            "ocr",
            {"format": "png", "font": "normal", "orientation": "upright", "contrast": "normal"},
        )[1]
        == 1.0
    )
    assert (
        memory.estimate(
            "smolit-ocr", "ocr", {"format": "png", "font": "normal", "orientation": "upside-down", "contrast": "normal"}
        )[1]
        == 1.0
    )
