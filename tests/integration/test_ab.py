"""A/B tests: the router splits conversations between the champion and a registry version by hash and records the
arm; `smolit ab start|status|stop` against the real broker and MLflow store; bad input changes nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from smolit.cli import app
from smolit.contracts import (
    CONTROL,
    TREATMENT,
    ExperimentStarted,
    ExperimentStopped,
    RequestReceived,
    RouterModelPromoted,
    RoutingDecided,
    Topic,
    TopicNames,
    TrainingExample,
    arm,
)
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.registry import open_registry
from smolit.router import ModelWatcher
from smolit.router.network import NetworkScorer

from ..conftest import read_events
from .test_learner import World, _learner, _router

pytestmark = pytest.mark.integration


def test_router_splits_conversations_by_hash_and_records_the_arm(tmp_path: Path) -> None:
    """With a test on a trained version running, treatment conversations route with that version, the others with
    the champion (here: similarity), every decision names the test and its arm; stopping ends the split."""
    world = World()
    router = _router(world)
    learner = _learner(world, router, tmp_path)
    [promoted] = [
        o.event for o in learner.handle(world.bandit_examples(500)) if isinstance(o.event, RouterModelPromoted)
    ]
    registry = learner.registry
    watcher = ModelWatcher(
        router,
        lambda: None,  # no champion: control keeps similarity routing
        lambda v: NetworkScorer(registry.load("smolit-router", v), router.features, v),
    )
    started = ExperimentStarted(
        correlation_id=uuid.uuid4(), experiment_id="ab-t", router_version=promoted.version, share=0.3
    )
    watcher.handle([started])
    requests = [
        RequestReceived(correlation_id=uuid.uuid4(), conversation_id=f"c{i}", text=world.request(i % 3))
        for i in range(120)
    ]
    decided = [o.event for o in router.handle(requests) if isinstance(o.event, RoutingDecided)]
    arms = {d.arm for d in decided}
    assert arms == {CONTROL, TREATMENT}
    for request, d in zip(requests, decided, strict=True):
        assert d.experiment_id == "ab-t"
        assert d.arm == arm(request.conversation_id, "ab-t", 0.3)
        assert d.model_version == (promoted.version if d.arm == TREATMENT else "similarity-v1")

    watcher.handle([ExperimentStopped(correlation_id=uuid.uuid4(), experiment_id="ab-t", decision="too few")])
    after = [o.event for o in router.handle(requests[:10]) if isinstance(o.event, RoutingDecided)]
    assert {(d.experiment_id, d.arm, d.model_version) for d in after} == {(None, None, "similarity-v1")}


@pytest.fixture
def env(tmp_path: Path, broker: str, topics: TopicNames) -> dict[str, str]:
    tracking = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    registry = open_registry(tracking, tmp_path / "data")
    registry.log_version("smolit-router", {"w": torch.zeros(1)}, params={}, metrics={})  # version 1
    return {
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu",
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "SMOLIT_MLFLOW_TRACKING_URI": tracking,
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, ["ab", *args], env=env)


def _models(profile: KafkaProfile, topics: TopicNames, expect: int = 100) -> list:
    return read_events(profile, topics, Topic.ROUTER_MODELS, expect=expect, timeout_s=3)


def test_bad_input_is_refused_and_publishes_nothing(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames
) -> None:
    """A missing version, a share outside (0, 1), an agent without a variant or a stop without a test: clear error,
    non-zero exit, nothing on the router-models topic."""
    for args, words in (
        (("start", "--router-version", "7"), "has no version 7"),
        (("start", "--router-version", "1", "--share", "0"), "--share must be between 0 and 1"),
        (("start", "--router-version", "1", "--share", "1.5"), "--share must be between 0 and 1"),
        (("start", "--agent", "legal"), "--agent and --variant go together"),
        (("stop",), "no running A/B test"),
    ):
        result = _cli(env, *args)
        assert result.exit_code != 0, args
        assert words in str(result.exception) and "nothing changed" in str(result.exception), (args, result.exception)
    assert _models(profile, topics) == []


def test_start_status_stop(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames, producer: EventProducer
) -> None:
    """`start` publishes the test and refuses a second one; `status` counts judged outcomes per arm from decisions
    and training examples; `stop` logs the result to MLflow and publishes the decision."""
    assert _cli(env, "start", "--router-version", "1", "--share", "0.5", "--id", "ab-1").exit_code == 0
    second = _cli(env, "start", "--router-version", "1")
    assert second.exit_code != 0 and "ab-1 on version 1 is running" in str(second.exception)
    [started] = _models(profile, topics, expect=1)
    assert isinstance(started, ExperimentStarted) and started.share == 0.5 and started.router_version == "1"

    # 40 judged requests per arm: control 10 positive, treatment 35 positive.
    for which, positives in ((CONTROL, 10), (TREATMENT, 35)):
        for i in range(40):
            rid = uuid.uuid4()
            decided = RoutingDecided(
                correlation_id=rid, agent="a", scores={}, score=1, model_version="v", latency_ms=1, embedding="",
                experiment_id="ab-1", arm=which,
            )  # fmt: skip
            example = TrainingExample(
                correlation_id=rid, text="t", embedding="", agent="a", scores={}, positive=i < positives
            )
            producer.send(Outgoing(Topic.DECISIONS, str(rid), decided))
            producer.send(Outgoing(Topic.TRAINING_EXAMPLES, "a", example))
    producer.flush()

    status = _cli(env, "status", "--json")
    assert status.exit_code == 0, status.output
    [row] = json.loads(status.output)
    assert row["status"] == "running" and row["control_judged"] == 40 and row["treatment_positive"] == 35
    assert row["decision"] == "treatment better" and row["p_value"] < 0.001

    stopped = _cli(env, "stop", "ab-1", "--reason", "enough data")
    assert stopped.exit_code == 0, stopped.output
    events = _models(profile, topics, expect=2)
    assert isinstance(events[-1], ExperimentStopped) and events[-1].decision == "treatment better"
    assert events[-1].results["treatment_judged"] == 40
    registry = open_registry(env["SMOLIT_MLFLOW_TRACKING_URI"], Path(env["SMOLIT_DATA_DIR"]), "smolit-ab")
    [run_id] = registry.runs_tagged({"experiment_id": "ab-1", "decision": "treatment better"})
    assert registry.client.get_run(run_id).data.params["target"] == "smolit-router/1"
    assert json.loads(_cli(env, "status", "--json").output)[0]["status"] == "stopped"
