"""`smolit agents`, `agents unflag` and `agents retire` through the CLI against the real broker and database:
flags are listed with their evidence, operator decisions land on the lifecycle topic, bad input changes nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from smolit.cli import app
from smolit.contracts import AgentCard, AgentFlagged, AgentRetired, AgentUnflagged, AgentUpdated, Topic, TopicNames
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing

from ..conftest import read_events

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, broker: str, topics: TopicNames, database_url: str) -> dict[str, str]:
    cards = tmp_path / "cards"
    cards.mkdir()
    for name in ("general", "legal"):
        (cards / f"{name}.yaml").write_text(f"name: {name}\ndescription: {name} questions.\n")
    return {
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu",
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_AGENTS_DIR": str(cards),
        "SMOLIT_FALLBACK_AGENT": "general",
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, ["agents", *args], env=env)


def _lifecycle(profile: KafkaProfile, topics: TopicNames) -> list:
    return read_events(profile, topics, Topic.AGENT_LIFECYCLE, expect=100, timeout_s=3)


def test_bad_input_is_refused_and_publishes_nothing(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames
) -> None:
    """Retiring the fallback or an unknown agent, or unflagging an agent that is not flagged: clear error, non-zero
    exit, no event on the lifecycle topic."""
    for args, words in (
        (("retire", "general"), "fallback agent"),
        (("retire", "nobody"), "unknown agent 'nobody'"),
        (("unflag", "nobody"), "unknown agent 'nobody'"),
        (("unflag", "legal"), "not flagged"),
    ):
        result = _cli(env, *args)
        assert result.exit_code != 0, args
        assert words in str(result.exception) and "nothing changed" in str(result.exception), args
    assert _lifecycle(profile, topics) == []


def test_flags_are_listed_with_evidence_and_operators_unflag_and_retire(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames, producer: EventProducer
) -> None:
    """A learner flag shows in `agents --json` with its evidence; `unflag` and `retire` publish the operator's
    events; a retired agent is listed as retired and cannot be retired twice."""
    flag = AgentFlagged(
        correlation_id=uuid.uuid4(),
        producer="learner",
        agent="legal",
        reason="14/20 negative outcomes",
        evidence={"negatives": 14.0, "judged": 20.0, "lower_bound": 0.45, "flag_threshold": 0.35},
        rule="wilson-negative-rate-v1",
        card_version=1,
        proposed_actions=("challenger",),
    )
    producer.send(Outgoing(Topic.AGENT_LIFECYCLE, "legal", flag))
    challenger = AgentCard(name="legal", description="legal questions.", version=2)
    trial = flag.caused(AgentUpdated, producer="learner", card=challenger, share=0.5)
    producer.send(Outgoing(Topic.AGENT_LIFECYCLE, "legal", trial))
    producer.flush()
    listed = {r["agent"]: r for r in json.loads(_cli(env, "--json").stdout)}
    assert listed["legal"]["challenger"] == {"version": 2, "share": 0.5} and listed["general"]["challenger"] is None
    assert listed["general"]["status"] == "active"
    assert listed["legal"]["status"] == "flagged"
    assert listed["legal"]["flag"]["evidence"]["lower_bound"] == 0.45
    assert listed["legal"]["flag"]["proposed_actions"] == ["challenger"]
    table = _cli(env)
    assert table.exit_code == 0 and "14/20 negative outcomes" in table.stdout
    assert "challenger v2 answers 50% of conversations" in table.stdout

    assert _cli(env, "unflag", "legal").exit_code == 0
    assert json.loads(_cli(env, "--json").stdout)[1]["status"] == "active"
    assert _cli(env, "retire", "legal").exit_code == 0
    assert json.loads(_cli(env, "--json").stdout)[1]["status"] == "retired"
    assert json.loads(_cli(env, "--json").stdout)[1]["challenger"] is None  # retirement ends the trial
    again = _cli(env, "retire", "legal")
    assert again.exit_code != 0 and "already retired" in str(again.exception)

    events = _lifecycle(profile, topics)
    operator = [(type(e), e.reason, e.producer) for e in events if not isinstance(e, AgentFlagged | AgentUpdated)]
    assert operator == [(AgentUnflagged, "operator", "cli"), (AgentRetired, "operator", "cli")]


def test_rollback_announces_a_recorded_card_as_the_next_version(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames, producer: EventProducer
) -> None:
    """With versions 1 and 2 recorded in MLflow and version 2 live, `rollback legal --to 1` publishes version 3 with
    version 1's settings and records it; an unrecorded version is refused and publishes nothing."""
    from smolit.contracts import AgentCard, AgentUpdated
    from smolit.infra.registry import open_registry
    from smolit.infra.settings import Settings
    from smolit.learner.improvement import AGENT_EXPERIMENT, MlflowAgentVersions

    settings = Settings(data_dir=Path(env["SMOLIT_DATA_DIR"]))
    versions = MlflowAgentVersions(open_registry(settings.tracking_uri, settings.data_dir, AGENT_EXPERIMENT))
    v1 = AgentCard(name="legal", description="legal questions.")
    v2 = v1.model_copy(update={"version": 2, "retrieval": v1.retrieval.model_copy(update={"top_k": 8})})
    versions.record(v1, reason="flagged", metrics={})
    versions.record(v2, reason="challenger of version 1", metrics={})
    producer.send(Outgoing(Topic.AGENT_LIFECYCLE, "legal", AgentUpdated(correlation_id=uuid.uuid4(), card=v2)))
    producer.flush()

    missing = _cli(env, "rollback", "legal", "--to", "9")
    assert missing.exit_code != 0 and "no recorded version 9" in str(missing.exception)
    assert len(_lifecycle(profile, topics)) == 1
    done = _cli(env, "rollback", "legal", "--to", "1")
    assert done.exit_code == 0, done.output
    restored = _lifecycle(profile, topics)[-1]
    assert isinstance(restored, AgentUpdated) and restored.card == v1.model_copy(update={"version": 3})
    assert versions.card("legal", 3) == restored.card
    assert json.loads(_cli(env, "--json").stdout)[1]["version"] == 3
