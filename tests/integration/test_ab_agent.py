"""Agent card variants on trial through the real path: `smolit ab start --agent A --variant FILE` on the real broker,
the agents runtime (replaying the topics as a starting worker does) answering the treatment arm's conversations with
the variant's prompt at a real OpenAI-compatible server, `ab status|stop` comparing the arms from the answers; a
learner challenger (`AgentUpdated.share`) splits and is promoted the same way; bad input publishes nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner, Result

from smolit.agents import AgentMetrics, AgentRuntime, Ingestor, RawDocument, Trials, follow_cards
from smolit.cli import app
from smolit.contracts import (
    CONTROL,
    TREATMENT,
    AgentCard,
    AgentUpdated,
    AnswerProduced,
    ExperimentStarted,
    ExperimentStopped,
    TaskAssigned,
    Topic,
    TopicNames,
    TrainingExample,
    arm,
    challenger_trial,
    pack_vector,
)
from smolit.errors import SetupError
from smolit.infra.catalog import CardCatalog
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.llm import OpenAILLM
from smolit.infra.metrics import ConsumerMetrics
from smolit.infra.registry import open_registry
from smolit.infra.settings import Settings
from smolit.services import Wiring, follow_topics

from ..conftest import read_events
from .openai_server import running_server

pytestmark = pytest.mark.integration

PASSAGE = "A contract signed under duress can be voided. Both parties must consent freely to its terms."
CHAMPION_PROMPT = "You are the legal agent; cite passages as [n]."
VARIANT_PROMPT = "You are VARIANT-PLAIN-WORDS; explain like a friend."


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with running_server() as running:
        yield running


@pytest.fixture
def card(pool: ConnectionPool, embedder) -> AgentCard:
    collection = f"c{uuid.uuid4().hex[:8]}"
    Ingestor(KnowledgeStore(pool), embedder).ingest(collection, RawDocument("law#duress", PASSAGE, "Duress"))
    llm = {"backend": "openai", "model": "m", "system_prompt": CHAMPION_PROMPT, "cache": False}
    return AgentCard.model_validate({"name": "legal", "description": "law", "collection": collection, "llm": llm})


@pytest.fixture
def env(tmp_path: Path, broker: str, topics: TopicNames, card: AgentCard) -> dict[str, str]:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "legal.yaml").write_text(json.dumps(card.model_dump(mode="json", exclude_defaults=True)))
    (agents / "general.yaml").write_text(json.dumps({"name": "general", "description": "anything else"}))
    return {
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu",
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "SMOLIT_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow/mlflow.db",
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "SMOLIT_AGENTS_DIR": str(agents),
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, ["ab", *args], env=env)


@contextmanager
def _worker(
    pool: ConnectionPool, profile: KafkaProfile, topics: TopicNames, producer: EventProducer, card: AgentCard, url: str
) -> Iterator[tuple[AgentRuntime, Trials]]:
    """The agents service's runtime with its card loop wired as `smolit run agents` wires it (`follow_topics`: both
    topics replayed before the first task, then followed by a running consumer loop)."""
    trials = Trials()
    runtime = AgentRuntime(
        {card.name: card},
        KnowledgeStore(pool),
        {"openai": OpenAILLM(url, None, "default-model", 5.0, 0)},
        default_backend="extractive",
        default_top_k=3,
        metrics=AgentMetrics.create(CollectorRegistry()),
        trials=trials,
    )
    handler = follow_cards(CardCatalog({card.name: card}, lambda cards, _: runtime.use_cards(cards)).handle, trials)
    registry = CollectorRegistry()
    wiring = Wiring(
        Settings(), profile, topics, producer, pool, registry, ConsumerMetrics.create(registry), uuid.uuid4().hex[:8]
    )
    loop = follow_topics(wiring, "agents", [Topic.AGENT_LIFECYCLE, Topic.ROUTER_MODELS], handler)
    thread = loop.start_thread()
    try:
        assert loop.assigned.wait(30)
        yield runtime, trials
    finally:
        loop.stop()
        thread.join(15)


def _wait(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the running worker did not pick up the event"
        time.sleep(0.1)


def _ask(runtime: AgentRuntime, embedder, conversations: list[str], received: list[dict[str, Any]]) -> list[Any]:
    """One task per conversation; returns (conversation, AnswerProduced, system prompt the server got)."""
    vector = pack_vector(embedder.embed(["Is a contract signed under duress valid?"])[0].tolist())
    rows = []
    for conversation in conversations:
        task = TaskAssigned(
            correlation_id=uuid.uuid4(), agent="legal", text="Is a contract signed under duress valid?",
            conversation_id=conversation, embedding=vector,
        )  # fmt: skip
        before = len(received)
        [out] = runtime.handle([task])
        assert isinstance(out.event, AnswerProduced), out.event
        [body] = received[before:]
        rows.append((conversation, out.event, body["messages"][0]["content"]))
    return rows


def test_an_agent_test_answers_the_treatment_arm_with_the_variant(
    env: dict[str, str], pool, embedder, server, card: AgentCard, profile: KafkaProfile, topics: TopicNames,
    producer: EventProducer, tmp_path: Path,
) -> None:  # fmt: skip
    """After `ab start --agent legal --variant FILE --share 0.5`, a (re)started agents worker sends the variant's
    system prompt for the conversations hashed into treatment and the card's for the others, every answer naming the
    test and arm; `status` compares the arms from the answers and judged outcomes; `stop` logs to MLflow, publishes
    the stop, and the variant is no longer used."""
    url, received = server
    variant = tmp_path / "plain.yaml"
    variant.write_text(f"llm:\n  system_prompt: '{VARIANT_PROMPT}'\n  temperature: 0.7\nretrieval:\n  top_k: 2\n")
    started = _cli(env, "start", "--agent", "legal", "--variant", str(variant), "--share", "0.5", "--id", "ab-v")
    assert started.exit_code == 0, started.output
    [event] = read_events(profile, topics, Topic.ROUTER_MODELS, expect=1)
    assert isinstance(event, ExperimentStarted) and (event.kind, event.agent, event.share) == ("agent", "legal", 0.5)
    assert event.variant is not None and event.variant.llm.system_prompt == VARIANT_PROMPT
    assert (event.variant.llm.temperature, event.variant.retrieval.top_k) == (0.7, 2)
    assert event.variant.knowledge_collection == card.knowledge_collection
    assert event.variant.version == card.version + 1

    with _worker(pool, profile, topics, producer, card, url) as (runtime, trials):
        _served_and_stopped(runtime, trials, embedder, received, env, profile, topics, producer)


def _served_and_stopped(
    runtime: AgentRuntime, trials: Trials, embedder, received: list[dict[str, Any]], env: dict[str, str],
    profile: KafkaProfile, topics: TopicNames, producer: EventProducer,
) -> None:  # fmt: skip
    rows = _ask(runtime, embedder, [f"conv-{i}" for i in range(30)], received)
    assert {answer.arm for _, answer, _ in rows} == {CONTROL, TREATMENT}
    for conversation, answer, prompt in rows:
        expected = arm(conversation, "ab-v", 0.5)
        assert (answer.experiment_id, answer.arm) == ("ab-v", expected)
        assert answer.card_version == (2 if expected == TREATMENT else 1)  # the variant is numbered after the card
        assert prompt == (VARIANT_PROMPT if expected == TREATMENT else CHAMPION_PROMPT)
        assert (VARIANT_PROMPT in answer.answer) == (expected == TREATMENT)  # the server quotes the prompt it got

    # Judged outcomes: treatment answers liked, control answers disliked (as feedback would make them).
    for _, answer, _ in rows:
        producer.send(Outgoing(Topic.ANSWERS, str(answer.correlation_id), answer))
        example = TrainingExample(
            correlation_id=answer.correlation_id, text="q", embedding="", agent="legal", scores={},
            positive=answer.arm == TREATMENT, card_version=1,
        )  # fmt: skip
        producer.send(Outgoing(Topic.TRAINING_EXAMPLES, "legal", example))
    producer.flush()
    treated = sum(a.arm == TREATMENT for _, a, _ in rows)
    status = _cli(env, "status", "--json", "--min-per-arm", "5")
    assert status.exit_code == 0, status.output
    [row] = json.loads(status.stdout)
    assert (row["kind"], row["agent"], row["status"]) == ("agent", "legal", "running")
    assert (row["treatment_positive"], row["treatment_judged"]) == (treated, treated)
    assert (row["control_positive"], row["control_judged"]) == (0, len(rows) - treated)
    assert row["decision"] == "treatment better"

    stopped = _cli(env, "stop", "--min-per-arm", "5")
    assert stopped.exit_code == 0, stopped.output
    events = read_events(profile, topics, Topic.ROUTER_MODELS, expect=2)
    assert isinstance(events[-1], ExperimentStopped) and events[-1].decision == "treatment better"
    runs = open_registry(env["SMOLIT_MLFLOW_TRACKING_URI"], Path(env["SMOLIT_DATA_DIR"]), "smolit-ab")
    [run_id] = runs.runs_tagged({"experiment_id": "ab-v"})
    assert VARIANT_PROMPT in runs.read_text(run_id, "variant.json")

    _wait(lambda: "legal" not in trials.active)  # the running worker's loop follows the stop, no restart
    after = _ask(runtime, embedder, [c for c, _, _ in rows[:8]], received)
    assert {(a.experiment_id, a.arm, p) for _, a, p in after} == {(None, None, CHAMPION_PROMPT)}


def test_a_learner_challenger_shares_the_traffic_until_promoted(
    env: dict[str, str], pool, embedder, server, card: AgentCard, profile: KafkaProfile, topics: TopicNames,
    producer: EventProducer,
) -> None:  # fmt: skip
    """An `AgentUpdated` with share 0.4 on the lifecycle topic: a starting worker answers that share of the agent's
    conversations with the challenger card (version 2) and the rest with version 1; `ab status` compares the two;
    the promotion (no share) makes version 2 answer everyone, without a restart."""
    url, received = server
    llm = card.llm.model_copy(update={"system_prompt": VARIANT_PROMPT})
    challenger = card.model_copy(update={"llm": llm, "version": 2})
    update = AgentUpdated(correlation_id=uuid.uuid4(), producer="learner", card=challenger, share=0.4)
    producer.send(Outgoing(Topic.AGENT_LIFECYCLE, "legal", update))
    producer.flush()
    with _worker(pool, profile, topics, producer, card, url) as (runtime, trials):
        trial = challenger_trial("legal", 2)
        rows = _ask(runtime, embedder, [f"chat-{i}" for i in range(20)], received)
        assert {a.arm for _, a, _ in rows} == {CONTROL, TREATMENT}
        for conversation, answer, prompt in rows:
            treated = arm(conversation, trial, 0.4) == TREATMENT
            assert (answer.experiment_id, answer.card_version) == (trial, 2 if treated else 1)
            assert prompt == (VARIANT_PROMPT if treated else CHAMPION_PROMPT)
            producer.send(Outgoing(Topic.ANSWERS, str(answer.correlation_id), answer))
            example = TrainingExample(
                correlation_id=answer.correlation_id, text="q", embedding="", agent="legal", scores={},
                positive=not treated, card_version=answer.card_version,
            )  # fmt: skip
            producer.send(Outgoing(Topic.TRAINING_EXAMPLES, "legal", example))
        producer.flush()
        status = _cli(env, "status", "--json", "--min-per-arm", "1")
        assert status.exit_code == 0, status.output
        [row] = json.loads(status.stdout)
        treated_count = sum(a.arm == TREATMENT for _, a, _ in rows)
        assert (row["experiment_id"], row["kind"], row["share"]) == (trial, "challenger", 0.4)
        assert (row["treatment_positive"], row["treatment_judged"]) == (0, treated_count)
        assert (row["control_positive"], row["control_judged"]) == (len(rows) - treated_count,) * 2

        promotion = update.caused(AgentUpdated, producer="learner", card=challenger)
        producer.send(Outgoing(Topic.AGENT_LIFECYCLE, "legal", promotion))
        producer.flush()
        _wait(lambda: "legal" not in trials.active)
        after = _ask(runtime, embedder, [c for c, _, _ in rows[:6]], received)
        assert {(a.experiment_id, a.card_version, p) for _, a, p in after} == {(None, 2, VARIANT_PROMPT)}


def test_bad_agent_tests_are_refused_and_publish_nothing(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames, tmp_path: Path
) -> None:
    """Unknown agent, missing or invalid variant file, a field a variant may not set, an invalid value, a share outside
    (0, 1), --agent without --variant, both kinds at once, and a second test while one runs: a clear error, exit 2,
    nothing on the router-models topic (beyond the one valid start)."""
    good = tmp_path / "good.yaml"
    good.write_text("llm:\n  system_prompt: Be brief.\n")
    files = {
        "broken.yaml": "llm: [unclosed\n",
        "renames.yaml": "name: other\n",
        "unknown.yaml": "llm:\n  prompt: x\n",
        "hot.yaml": "llm:\n  temperature: 9\n",
        "same.yaml": f"llm:\n  system_prompt: '{CHAMPION_PROMPT}'\n",
        "generative.yaml": "llm:\n  backend: openai\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cases = [
        (("--agent", "nobody", "--variant", str(good)), "unknown agent 'nobody'"),
        (("--agent", "legal", "--variant", str(tmp_path / "missing.yaml")), "cannot be read"),
        (("--agent", "legal", "--variant", str(tmp_path / "broken.yaml")), "is not valid YAML"),
        (("--agent", "legal", "--variant", str(tmp_path / "renames.yaml")), "may only override llm, retrieval"),
        (("--agent", "legal", "--variant", str(tmp_path / "unknown.yaml")), "unknown llm settings: prompt"),
        (("--agent", "legal", "--variant", str(tmp_path / "hot.yaml")), "temperature"),
        (("--agent", "legal", "--variant", str(tmp_path / "same.yaml")), "changes nothing"),
        (("--agent", "general", "--variant", str(tmp_path / "generative.yaml")), "openai backend, which is not"),
        (("--agent", "legal", "--variant", str(good), "--share", "0"), "--share must be between 0 and 1"),
        (("--agent", "legal", "--variant", str(good), "--share", "1"), "--share must be between 0 and 1"),
        (("--agent", "legal"), "--agent and --variant go together"),
        (("--agent", "legal", "--variant", str(good), "--router-version", "1"), "either --router-version"),
    ]
    for args, words in cases:
        result = _cli(env, "start", *args)
        assert isinstance(result.exception, SetupError), (args, result.output, result.exception)
        assert words in str(result.exception) and "nothing changed" in str(result.exception), (args, result.exception)
    assert read_events(profile, topics, Topic.ROUTER_MODELS, expect=1, timeout_s=3) == []

    assert _cli(env, "start", "--agent", "legal", "--variant", str(good), "--id", "ab-1").exit_code == 0
    second = _cli(env, "start", "--agent", "general", "--variant", str(good))
    assert isinstance(second.exception, SetupError)
    assert "ab-1 on agent legal variant is running" in str(second.exception)
    assert len(read_events(profile, topics, Topic.ROUTER_MODELS, expect=2, timeout_s=3)) == 1
