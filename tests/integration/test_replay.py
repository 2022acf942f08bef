"""`smolit replay` rebuilds training examples from decisions/answers/feedback on the real broker and retrains
deterministically into the real MLflow registry."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from smolit.contracts import AnswerProduced, FeedbackGiven, RoutingDecided, Topic, TopicNames, pack_vector
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.registry import CHAMPION, open_registry
from smolit.infra.settings import load_settings
from smolit.replay import rebuild_examples, retrain

from ..conftest import read_events
from .test_bench_routing import FINANCE, HEALTH


def _log(embedder, producer: EventProducer) -> int:
    """Per question: a decision (alternating agents), an answer, and thumbs from the user (good when right)."""
    questions = [(q, "finance") for q in FINANCE] + [(q, "health") for q in HEALTH]
    vectors = embedder.embed([q for q, _ in questions])
    # Request ids decide the holdout split (an example's id derives from its request's): seeded, so the holdout
    # always holds examples with a known right agent.
    ids = random.Random(11)
    for i, ((text, domain), vector) in enumerate(zip(questions, vectors, strict=True)):
        request = uuid.UUID(int=ids.getrandbits(128), version=4)
        agent = "finance" if i % 2 == 0 else "health"
        decided = RoutingDecided(
            correlation_id=request,
            agent=agent,
            scores={"finance": 0.3, "health": 0.3},
            score=0.3,
            model_version="similarity-v1",
            latency_ms=3.0,
            embedding=pack_vector(vector.tolist()),
            text=text,
        )
        answered = decided.caused(
            AnswerProduced, producer="agents", agent=agent, answer="...", backend="extractive", latency_ms=12.0
        )
        rated = answered.caused(FeedbackGiven, producer="gateway", rating=1 if agent == domain else -1, user="u")
        producer.send(Outgoing(Topic.DECISIONS, str(request), decided))
        producer.send(Outgoing(Topic.ANSWERS, str(request), answered))
        producer.send(Outgoing(Topic.FEEDBACK, str(request), rated))
        if i == 0:
            producer.send(Outgoing(Topic.FEEDBACK, str(request), rated))  # a redelivered duplicate
    producer.flush()
    return len(questions)


@pytest.fixture
def settings(tmp_path: Path, profile: KafkaProfile, topics: TopicNames):
    return load_settings(
        data_dir=tmp_path, kafka_bootstrap=profile.bootstrap, topic_prefix=topics.prefix, learner_holdout_share=0.3
    )


def test_replay_is_deterministic_and_registers_a_challenger(
    settings, embedder, producer: EventProducer, profile: KafkaProfile, topics: TopicNames
) -> None:
    n = _log(embedder, producer)

    counted = retrain(settings, None, dry_run=True)
    assert (counted["requests"], counted["examples"], counted["labelled"]) == (n, n, n)
    assert counted["events"] == {"AnswerProduced": n, "FeedbackGiven": n, "RoutingDecided": n}
    assert "version" not in counted

    first = retrain(settings, None, dry_run=False)
    second = retrain(settings, None, dry_run=False, promote=True)
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["metrics"] == {**second["metrics"], "train_time_s": first["metrics"]["train_time_s"]}
    assert first["metrics"]["examples"] > 0 and first["metrics"]["accuracy"] is not None

    registry = open_registry(settings.tracking_uri, settings.data_dir)
    assert registry.version_for("smolit-router", CHAMPION) == "2"
    posterior = registry.load("smolit-router", "2")["posterior"]  # Thompson sampling can route with it
    assert set(posterior["delta_var"]) == set(posterior["bias_var"]) and posterior["prior_var"] > 0
    [promoted] = read_events(profile, topics, Topic.ROUTER_MODELS, 1)
    assert promoted.version == "2"


def test_rebuild_counts_a_duplicate_once_and_a_missing_answer_as_failure() -> None:
    request = uuid.uuid4()
    decided = RoutingDecided(
        correlation_id=request,
        agent="finance",
        scores={"finance": 0.5},
        score=0.5,
        model_version="v",
        latency_ms=1.0,
        embedding=pack_vector([1.0, 0.0]),
        text="q",
    )
    examples, counts = rebuild_examples([decided, decided])
    assert counts.events == {"RoutingDecided": 1}
    [example] = examples
    assert example.failed and example.positive is False
