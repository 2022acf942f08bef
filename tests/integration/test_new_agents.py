"""New domains -> new agents through the real broker and database: low-confidence requests of a new topic become
one proposal; approving it creates an agent the router routes to and the agents service answers for; requests the
router was confident about but whose answers were rated bad count too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from smolit.agents import AgentMetrics, AgentRuntime, Ingestor, RawDocument, catalog_listener
from smolit.contracts import (
    AgentCreated,
    AgentProposed,
    AnswerProduced,
    Event,
    RequestReceived,
    RoutingDecided,
    Topic,
    TopicNames,
    TrainingExample,
)
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
from smolit.infra.kafka import (
    ConsumerLoop,
    EventProducer,
    KafkaProfile,
    LoopConfig,
    Outgoing,
    PostgresDeduper,
    ensure_topics,
)
from smolit.infra.knowledge import POOL_COLLECTION, KnowledgeStore
from smolit.infra.llm import ExtractiveLLM, OpenAILLM
from smolit.infra.metrics import ConsumerMetrics
from smolit.learner import AgentProposer, Discovery, DiscoveryConfig, LLMNamer, ProposerMetrics
from smolit.router import Router, RouterMetrics

from ..conftest import read_events
from ..new_domains import COOKING, FINANCE, POOL_DOCUMENTS
from .openai_server import running_server

pytestmark = pytest.mark.integration

NEW_COOKING_QUESTION = "At what temperature and for how long should I roast a whole chicken?"


@pytest.fixture
def topics(profile: KafkaProfile) -> TopicNames:
    """One partition per topic: decisions are keyed by request id, so on several partitions the proposer saw the
    burst in a timing-dependent order, and which sub-topic formed the first cluster (its card, its knowledge)
    varied between runs. In order, the burst gives one cluster of roasting and cooking questions."""
    names = TopicNames(f"t{uuid.uuid4().hex[:10]}")
    ensure_topics(profile.admin(), names, partitions=1)
    return names


@dataclass
class System:
    """Router, proposer and agents service as consumer loops on one broker and database."""

    profile: KafkaProfile
    topics: TopicNames
    producer: EventProducer
    router: Router
    router_cards: CardCatalog
    agent_cards: CardCatalog
    registry: CollectorRegistry
    database_url: str

    def ask(self, texts: Sequence[str]) -> list[RequestReceived]:
        """Publish one request per text, each in its own conversation."""
        requests = [
            RequestReceived(correlation_id=uuid.uuid4(), conversation_id=f"c{i}", text=t) for i, t in enumerate(texts)
        ]
        for r in requests:
            self.producer.send(Outgoing(Topic.REQUESTS, r.conversation_id, r))
        self.producer.flush()
        return requests

    def lifecycle(self, expect: int, timeout_s: float = 20.0) -> list[Event]:
        return read_events(self.profile, self.topics, Topic.AGENT_LIFECYCLE, expect, timeout_s)

    def collected(self) -> float:
        return self.registry.get_sample_value("smolit_discovery_requests_total") or 0.0

    def rated(self, verdict: str) -> float:
        return self.registry.get_sample_value("smolit_discovery_feedback_total", {"verdict": verdict}) or 0.0

    def rate(self, decisions: Sequence[Event], positive: bool, preferred: str | None = None) -> None:
        """Publish the training examples the streams join makes of these decisions and a rating of each answer."""
        for d in decisions:
            assert isinstance(d, RoutingDecided)
            example = d.caused(
                TrainingExample,
                producer="streams",
                text=d.text,
                embedding=d.embedding,
                agent=d.agent,
                scores=d.scores,
                rating=1 if positive else -1,
                positive=positive,
                preferred_agent=preferred,
            )
            self.producer.send(Outgoing(Topic.TRAINING_EXAMPLES, str(d.correlation_id), example))
        self.producer.flush()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ) | {
            "SMOLIT_KAFKA_BOOTSTRAP": self.profile.bootstrap,
            "SMOLIT_KAFKA_PROFILE": "tansu",
            "SMOLIT_TOPIC_PREFIX": self.topics.prefix,
            "SMOLIT_DATABASE_URL": self.database_url,
        }
        return subprocess.run(
            [sys.executable, "-m", "smolit", *args], env=env, capture_output=True, text=True, timeout=120
        )


def _wait(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@contextmanager
def running(profile, topics, producer, pool, embedder, threshold: float = 0.25, namer=None) -> Iterator[System]:
    cards = load_cards()
    store = KnowledgeStore(pool)
    router = Router(
        cards, embedder, fallback="general", threshold=threshold, metrics=RouterMetrics.create(CollectorRegistry())
    )
    runtime = AgentRuntime(
        cards,
        store,
        {"extractive": ExtractiveLLM()},
        default_backend="extractive",
        default_top_k=3,
        metrics=AgentMetrics.create(CollectorRegistry()),
    )
    registry = CollectorRegistry()
    metrics = ProposerMetrics.create(registry)
    proposer = AgentProposer(
        Discovery(DiscoveryConfig(min_size=10, min_cohesion=0.18)),
        cards,
        embedder,
        metrics,
        knowledge=lambda centroid: store.pool_sources(centroid, 0.25, 20),
        namer=namer,
    )
    router_cards = CardCatalog(cards, lambda new, _: router.use_cards(new))
    agent_cards = CardCatalog(cards, catalog_listener(runtime, store))
    consumer_metrics = ConsumerMetrics.create(CollectorRegistry())
    tag = uuid.uuid4().hex[:6]

    def loop(group: str, wanted: list[Topic], handler, dedupe: bool = True) -> ConsumerLoop:
        config = LoopConfig(group=f"{group}-{tag}", topics=[topics(t) for t in wanted], batch_size=16, dedupe=dedupe)
        return ConsumerLoop(
            profile.consumer(config.group), config, handler, producer, PostgresDeduper(pool), consumer_metrics
        )

    loops = [
        loop("router", [Topic.REQUESTS], router.handle),
        loop("router-lifecycle", [Topic.AGENT_LIFECYCLE], router_cards.handle, dedupe=False),
        loop("proposer", [Topic.DECISIONS], proposer.handle_decisions),
        loop("proposer-outcomes", [Topic.TRAINING_EXAMPLES], proposer.handle_outcomes),
        loop("proposer-lifecycle", [Topic.AGENT_LIFECYCLE], proposer.handle_lifecycle, dedupe=False),
        loop("agents", [Topic.TASKS], runtime.handle),
        loop("agents-lifecycle", [Topic.AGENT_LIFECYCLE], agent_cards.handle, dedupe=False),
    ]
    threads: list[threading.Thread] = [lp.start_thread() for lp in loops]
    try:
        for lp in loops:
            assert lp.assigned.wait(30), "consumer group join timed out"
        yield System(profile, topics, producer, router, router_cards, agent_cards, registry, pool.conninfo)
    finally:
        for lp in loops:
            lp.stop()
        for thread in threads:
            thread.join(15)


def test_a_new_domain_becomes_one_agent_that_routes_and_answers(
    profile, topics, producer, pool, embedder, tmp_path
) -> None:
    """A burst of cooking questions (no agent covers cooking) yields exactly one proposal with matching pool
    documents; an unknown id is refused with nothing produced; approving creates the agent, the router sends a new
    cooking question to it and the agents service answers from the documents it took over from the pool."""
    tag = uuid.uuid4().hex[:6]
    ingestor = Ingestor(KnowledgeStore(pool), embedder)
    for path, text in POOL_DOCUMENTS.items():
        ingestor.ingest(POOL_COLLECTION, RawDocument(f"{tag}/{path}", text, path))
    with running(profile, topics, producer, pool, embedder) as system:
        system.ask(COOKING)
        decisions = read_events(profile, topics, Topic.DECISIONS, len(COOKING))
        low = sum(isinstance(d, RoutingDecided) and d.low_confidence for d in decisions)
        assert low >= len(COOKING) - 2  # a cooking question may score one agent above the threshold by chance
        assert _wait(lambda: system.collected() == low), "the proposer did not see every low-confidence decision"
        [proposal] = system.lifecycle(2, timeout_s=5)  # exactly one
        assert isinstance(proposal, AgentProposed) and proposal.size >= 10
        # Cooking documents only; the bread one scores about 0.245 to this cluster's centroid, at the 0.25 edge.
        assert f"{tag}/cooking/chicken.md" in proposal.knowledge
        assert set(proposal.knowledge) <= {f"{tag}/cooking/bread.md", f"{tag}/cooking/chicken.md"}

        listed = system.cli("agents", "proposals", "--json")
        assert listed.returncode == 0 and proposal.proposal_id in listed.stdout

        refused = system.cli("agents", "approve", "no-such-id")
        assert refused.returncode == 2 and "no proposal 'no-such-id'" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert len(system.lifecycle(2, timeout_s=3)) == 1  # nothing produced

        name = f"cooking-{tag}"
        approved = system.cli("agents", "approve", proposal.proposal_id, "--name", name)
        assert approved.returncode == 0, approved.stderr
        created = system.lifecycle(2)[1]
        assert isinstance(created, AgentCreated) and created.card.name == name
        assert _wait(lambda: name in system.router_cards and name in system.agent_cards)
        listed = system.cli("agents", "--json")
        assert listed.returncode == 0 and name in {a["agent"] for a in json.loads(listed.stdout)}
        extra = tmp_path / "pasta.md"
        extra.write_text("Cook pasta in plenty of salted boiling water and stir it in the first minute.")
        ingested = system.cli("ingest", str(extra), "--agent", name, "--json")  # a runtime agent takes documents
        assert ingested.returncode == 0 and json.loads(ingested.stdout)["counts"] == {"added": 1}, ingested.stderr

        [request] = system.ask([NEW_COOKING_QUESTION])
        answers = read_events(profile, topics, Topic.ANSWERS, len(COOKING) + 1, timeout_s=30)
    decision = next(
        d
        for d in read_events(profile, topics, Topic.DECISIONS, len(COOKING) + 1)
        if d.correlation_id == request.correlation_id
    )
    assert decision.agent == name and not decision.low_confidence, decision.scores  # type: ignore[attr-defined]
    [answer] = [a for a in answers if a.correlation_id == request.correlation_id]
    assert isinstance(answer, AnswerProduced) and answer.agent == name
    assert answer.sources and answer.sources[0].source == f"{tag}/cooking/chicken.md"
    assert KnowledgeStore(pool).document(name, f"{tag}/cooking/chicken.md") is not None  # taken from the pool
    assert KnowledgeStore(pool).document(POOL_COLLECTION, f"{tag}/astronomy/moons.md") is not None  # left there


def test_repeated_requests_of_a_known_domain_propose_nothing(profile, topics, producer, pool, embedder) -> None:
    """Finance questions asked over and over, all low-confidence under a strict threshold, form clusters of the
    finance agent's domain: no proposal, so never a clone of an existing agent."""
    with running(profile, topics, producer, pool, embedder, threshold=0.9) as system:
        texts = list(FINANCE) * 3
        system.ask(texts)
        assert _wait(lambda: system.collected() == len(texts)), "the proposer did not see every decision"
        assert system.registry.get_sample_value("smolit_discovery_clusters_total", {"verdict": "known"}) > 0
        assert system.lifecycle(1, timeout_s=3) == []


def test_confident_requests_rated_bad_become_a_proposal_unless_an_agent_is_named(
    profile, topics, producer, pool, embedder
) -> None:
    """With no confidence threshold nothing is low-confidence, so decisions alone propose nothing; bad ratings of the
    cooking answers make them unserved and yield one cooking proposal, while bad ratings of finance answers that name
    the finance agent (a routing or answer problem of an existing agent) add nothing."""
    with running(profile, topics, producer, pool, embedder, threshold=-1.0) as system:
        system.ask(FINANCE + COOKING)
        decisions = read_events(profile, topics, Topic.DECISIONS, len(FINANCE) + len(COOKING))
        assert not any(isinstance(d, RoutingDecided) and d.low_confidence for d in decisions)
        by_text = {d.text: d for d in decisions if isinstance(d, RoutingDecided)}
        system.rate([by_text[t] for t in FINANCE], positive=False, preferred="finance")
        assert _wait(lambda: system.rated("served") == len(FINANCE)), "the proposer did not see the finance ratings"
        assert system.lifecycle(1, timeout_s=3) == []
        system.rate([by_text[t] for t in COOKING], positive=False)
        [proposal] = system.lifecycle(1, timeout_s=30)
        assert _wait(lambda: system.rated("unserved") == len(COOKING)), "the proposer did not see every rating"
        assert system.lifecycle(2, timeout_s=3) == [proposal]  # exactly one
        assert system.collected() == 0
    assert isinstance(proposal, AgentProposed) and set(proposal.card.examples) <= set(COOKING)


def test_a_configured_llm_names_the_proposed_agent(profile, topics, producer, pool, embedder) -> None:
    """With an OpenAI-compatible endpoint (here a real HTTP server speaking the API), the proposal's name,
    description and system prompt come from the LLM, which saw the cluster's requests; `named_by` says so."""
    naming = {
        "name": "home-cooking",
        "description": "Answers questions about cooking: roasting, baking, recipes and kitchen timings.",
        "system_prompt": "You are a home cooking expert. Answer from the passages and cite them as [n].",
    }
    with running_server() as (url, received):
        llm = OpenAILLM(url, "test-key", f"reply:{json.dumps(naming)}", timeout_s=10, max_retries=0)
        with running(profile, topics, producer, pool, embedder, namer=LLMNamer(llm)) as system:
            system.ask(COOKING)
            assert _wait(lambda: system.lifecycle(1, timeout_s=1) != [], 90), "no proposal"
            [proposal] = system.lifecycle(2, timeout_s=3)  # exactly one
    assert isinstance(proposal, AgentProposed)
    assert (proposal.card.name, proposal.card.description) == (naming["name"], naming["description"])
    assert proposal.card.llm.system_prompt == naming["system_prompt"]
    assert proposal.named_by.startswith("llm:reply:")
    assert proposal.card.examples and set(proposal.card.examples) <= set(COOKING)
    [call] = received
    assert call["messages"][0]["role"] == "system" and proposal.card.examples[0] in call["messages"][1]["content"]
