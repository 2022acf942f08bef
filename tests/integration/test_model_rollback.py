"""Automatic rollback of a pipeline model through the real path: the learner service (`run_learner`, real wiring) and
the agents service (`run_agents`) run on the embedded broker and PostgreSQL with a real MLflow sqlite registry.
`smolit models promote smolit-ocr 2` makes version 2 the champion; validation outcomes and user feedback on answers
it served make it significantly worse than version 1; the learner moves the aliases back, publishes `RolledBack`
with the evidence, and the running agents service reads the next attachment with version 1 again."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from smolit.contracts import (
    AnswerProduced,
    FeedbackGiven,
    ModelOutcomeRecorded,
    ModelUse,
    RolledBack,
    Topic,
    TopicNames,
)
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.registry import CHAMPION, PREVIOUS, open_registry
from smolit.infra.shipped_models import register_shipped_models
from smolit.services.agents import run_agents
from smolit.services.learner import run_learner

from ..conftest import read_events
from .service_thread import service_settings, service_thread
from .test_model_hot_swap import _answer, _ask, _cli, env  # noqa: F401  (env is a fixture)

pytestmark = pytest.mark.integration


def _outcomes(version: str, good: int, bad: int) -> list[ModelOutcomeRecorded]:
    return [
        ModelOutcomeRecorded(
            correlation_id=uuid.uuid4(),
            producer="agents",
            model="smolit-ocr",
            version=version,
            agent="invoices",
            success=i < good,
            selected_by="manager",
        )
        for i in range(good + bad)
    ]


def _send(producer: EventProducer, items: list[Outgoing]) -> None:
    for item in items:
        producer.send(item)
    producer.flush(10)


def _ask_until(producer: EventProducer, embedder, profile: KafkaProfile, topics: TopicNames, version: str,
               start: int, seen: int) -> tuple[list[str], int]:  # fmt: skip
    """Ask about the invoice until an answer's OCR reading names `version` (the swap and the tasks travel on
    different topics); returns the versions seen and the answers read so far."""
    versions: list[str] = []
    for n in range(start, start + 6):
        answer = _answer(profile, topics, _ask(producer, embedder, n), seen)
        seen += 1
        assert "1,284.50" in answer.answer
        versions.append(answer.models[0].version)
        if versions[-1] == version:
            break
    assert versions[-1] == version, versions
    return versions, seen


def test_a_promoted_version_with_worse_live_outcomes_is_rolled_back_and_the_agents_switch_back(
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    profile: KafkaProfile,
    topics: TopicNames,
    producer: EventProducer,
    embedder,
) -> None:
    """V1 reads well, v2 is promoted; 12 failed validations and 8 thumbs-down answers served by v2 make it
    significantly worse: one RolledBack (v2 -> v1, with counts and z), aliases champion=1/previous=2, and the next
    attachment in the running agents service is read by v1."""
    registry = open_registry(env["SMOLIT_MLFLOW_TRACKING_URI"], Path(env["SMOLIT_DATA_DIR"]), "smolit-models")
    register_shipped_models(registry)  # smolit-ocr version 1 is champion
    registered = _cli(env, "models", "register-ocr", "smolit-ocr", "--config", "smolit-ocr-fast")
    assert registered.exit_code == 0, registered.output
    settings = service_settings(env, model_rollback_min_outcomes=20, discovery="off")
    with service_thread(settings, "agents", run_agents), service_thread(settings, "learner", run_learner):
        _send(producer, [Outgoing(Topic.MODEL_OUTCOMES, "smolit-ocr", e) for e in _outcomes("1", 20, 0)])
        first, seen = _ask_until(producer, embedder, profile, topics, "1", 1, 0)

        promoted = _cli(env, "models", "promote", "smolit-ocr", "2")
        assert promoted.exit_code == 0, promoted.output
        on_two, seen = _ask_until(producer, embedder, profile, topics, "2", 10, seen)

        bad = [Outgoing(Topic.MODEL_OUTCOMES, "smolit-ocr", e) for e in _outcomes("2", 0, 12)]
        for _ in range(8):  # answers v2 served, rated thumbs-down by their users
            answer = AnswerProduced(
                correlation_id=uuid.uuid4(),
                producer="agents",
                agent="invoices",
                answer="The total is 1.284,50.",
                backend="extractive",
                latency_ms=5.0,
                models=(ModelUse(step="ocr", name="smolit-ocr", version="2", alias=CHAMPION, input="scan.jpg"),),
            )
            rating = FeedbackGiven(correlation_id=answer.correlation_id, producer="gateway", rating=-1, user="ann")
            bad += [Outgoing(Topic.ANSWERS, str(answer.correlation_id), answer)]
            bad += [Outgoing(Topic.FEEDBACK, str(answer.correlation_id), rating)]
        _send(producer, bad)
        sent = time.monotonic()
        seen += 8  # the answers topic now also holds those answers

        models = read_events(profile, topics, Topic.ROUTER_MODELS, 2, timeout_s=60)
        rolled_after_s = round(time.monotonic() - sent, 2)
        assert [e.type for e in models] == ["ModelPromoted", "RolledBack"]
        rolled = models[1]
        assert isinstance(rolled, RolledBack) and rolled.producer == "learner"
        assert (rolled.registry_name, rolled.version, rolled.from_version) == ("smolit-ocr", "1", "2")
        ev = rolled.evidence
        # v2: its own readings in this test were good, the 12 validations and 8 ratings bad.
        assert ev["champion_judged"] - ev["champion_good"] == 20 and ev["previous_good"] >= 20
        assert ev["z"] < -1.645 and ev["min_outcomes"] == 20
        assert (registry.version_for("smolit-ocr", CHAMPION), registry.version_for("smolit-ocr", PREVIOUS)) == (
            "1",
            "2",
        )
        back, seen = _ask_until(producer, embedder, profile, topics, "1", 20, seen)
        print(json.dumps({"versions": [*first, *on_two, *back], "rollback_after_s": rolled_after_s, "evidence": ev}))
