"""Underperforming agents through the real broker: the learner's flag monitor (as `smolit run learner` wires it)
reads TrainingExample events, flags the bad agent with its evidence, announces a challenger card, records both card
versions as MLflow runs, and does not flag it again."""

from __future__ import annotations

import random
import socket
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.contracts import AgentFlagged, AgentUpdated, Topic, TopicNames, TrainingExample
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.metrics import ConsumerMetrics
from smolit.infra.registry import open_registry
from smolit.infra.settings import Settings
from smolit.learner.improvement import AGENT_EXPERIMENT
from smolit.services import Wiring, flag_monitor

from ..conftest import read_events

pytestmark = pytest.mark.integration
RATES = {"legal": 0.7, "finance": 0.1, "health": 0.15, "general": 0.5}


def _cards(folder: Path) -> Path:
    folder.mkdir()
    for name in RATES:
        (folder / f"{name}.yaml").write_text(f"name: {name}\ndescription: {name} questions.\n")
    return folder


def _example(agent: str, negative: bool) -> TrainingExample:
    return TrainingExample(
        correlation_id=uuid.uuid4(), text="q", embedding="", agent=agent, scores={}, positive=not negative
    )


def test_learner_flags_the_bad_agent_from_real_training_examples(
    tmp_path: Path, profile: KafkaProfile, topics: TopicNames, producer: EventProducer, pool: ConnectionPool
) -> None:
    """70 % negative `legal` among 10-15 % agents is flagged within 50 of its outcomes and gets a challenger (version
    2, wider retrieval) recorded in MLflow; a still-bad challenger is flagged once more, proposing retirement; no
    version is flagged twice; the fallback `general` (50 % negative) is never flagged."""
    settings = Settings(
        data_dir=tmp_path / "data", agents_dir=_cards(tmp_path / "cards"), fallback_agent="general", retrieval_top_k=4
    )
    registry = CollectorRegistry()
    wiring = Wiring(
        settings, profile, topics, producer, pool, registry, ConsumerMetrics.create(registry), socket.gethostname()
    )
    monitor = flag_monitor(wiring)
    loop = wiring.loop(
        f"flags-{uuid.uuid4().hex[:6]}", [Topic.TRAINING_EXAMPLES, Topic.AGENT_LIFECYCLE], monitor.handle
    )
    thread = loop.start_thread()
    try:
        assert loop.assigned.wait(30)
        rng = random.Random(7)
        sent_legal = 0
        for i in range(240):  # round robin: 60 outcomes per agent
            agent = list(RATES)[i % len(RATES)]
            producer.send(Outgoing(Topic.TRAINING_EXAMPLES, agent, _example(agent, rng.random() < RATES[agent])))
            sent_legal += agent == "legal"
        producer.flush()
        lifecycle = read_events(profile, topics, Topic.AGENT_LIFECYCLE, expect=2, timeout_s=40)
        time.sleep(2)  # anything emitted after the first two would show up now
        lifecycle = read_events(profile, topics, Topic.AGENT_LIFECYCLE, expect=10, timeout_s=3)
    finally:
        loop.stop()
        thread.join(15)
    flags = [e for e in lifecycle if isinstance(e, AgentFlagged)]
    updates = [e for e in lifecycle if isinstance(e, AgentUpdated)]
    assert {f.agent for f in flags} == {"legal"}, lifecycle
    flag = flags[0]
    assert flag.evidence["judged"] <= 50 and flag.evidence["lower_bound"] > flag.evidence["flag_threshold"]
    assert flag.card_version == 1 and flag.proposed_actions[0] == "challenger"
    assert [(f.card_version, f.proposed_actions) for f in flags[1:]] in ([], [(2, ("retire",))])
    assert len(updates) == 1 and updates[0].card.version == 2 and updates[0].card.retrieval.top_k == 8
    runs = open_registry(settings.tracking_uri, settings.data_dir, AGENT_EXPERIMENT)
    assert runs.runs_tagged({"agent": "legal", "version": "1"}) and runs.runs_tagged({"agent": "legal", "version": "2"})
