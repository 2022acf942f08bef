"""New domains -> new agents: clustering, naming, the no-clone and never-twice rules, approvals, the catalogue."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from smolit.contracts import (
    AgentCard,
    AgentCreated,
    AgentProposed,
    AgentUpdated,
    RoutingDecided,
    Topic,
    TrainingExample,
    pack_vector,
    unpack_vector,
)
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
from smolit.learner import AgentProposer, Discovery, DiscoveryConfig, ProposerMetrics
from smolit.learner.approval import ProposalError, approve, proposal_states
from smolit.learner.discovery import KnownDomain, NewDomain, agent_name, average_linkage, find_clusters, top_terms
from smolit.router.features import AgentFeatures

from ..new_domains import COOKING, FINANCE

CONFIG = DiscoveryConfig(min_size=10, min_cohesion=0.18)


def _blobs(rng: np.random.Generator, centers: np.ndarray, per: int, noise: float) -> np.ndarray:
    points = np.repeat(centers, per, axis=0) + noise * rng.standard_normal((len(centers) * per, centers.shape[1]))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_average_linkage_separates_topics() -> None:
    """Two groups of vectors around different directions come out as two clusters, never mixed."""
    rng = np.random.default_rng(0)
    centers = np.eye(2, 32)
    points = _blobs(rng, centers, 12, 0.12)
    clusters = average_linkage(points, 0.5)
    assert sorted(map(sorted, clusters)) == [list(range(12)), list(range(12, 24))]


def test_small_or_loose_groups_are_not_clusters() -> None:
    """Groups below the size threshold or the cohesion threshold are not reported."""
    rng = np.random.default_rng(1)
    tight = _blobs(rng, np.eye(1, 32), 5, 0.1)
    scattered = rng.standard_normal((40, 32))
    scattered /= np.linalg.norm(scattered, axis=1, keepdims=True)
    assert find_clusters(np.vstack([tight, scattered]), min_size=8, min_cohesion=0.5) == []
    [cluster] = find_clusters(np.vstack([tight, scattered]), min_size=5, min_cohesion=0.5)
    assert cluster.members == (0, 1, 2, 3, 4) and cluster.cohesion >= 0.5


def test_top_terms_prefer_the_cluster_over_the_background() -> None:
    """Terms shared by the cluster and rare elsewhere win; forms of one word count together."""
    cluster = ["How long do I bake sourdough bread?", "Why is my baked bread dense?", "Baking bread without yeast?"]
    background = ["How long is a mortgage?", "Why is the sky blue?", "How do I file taxes?"]
    assert sorted(top_terms(cluster, background, 2)) == ["bake", "bread"]


def test_agent_names_are_valid_and_unique() -> None:
    """Names come from the top two terms and never reuse a taken name."""
    assert agent_name(["bread", "oven"], set()) == "bread-oven"
    assert agent_name(["bread", "oven"], {"bread-oven"}) == "bread-oven-2"
    AgentCard(name=agent_name(["9lives", "x"], set()), description="valid")


def _discovery(embedder) -> Discovery:
    features = AgentFeatures.from_cards(load_cards(), embedder)
    discovery = Discovery(CONFIG)
    discovery.set_agents(features.agents, features.card_vectors())
    return discovery


def test_a_burst_of_a_new_topic_is_one_new_domain(embedder) -> None:
    """Cooking questions (no demo agent covers them) become exactly one new domain, named from cooking terms."""
    discovery = _discovery(embedder)
    reports = []
    for text, vector in zip(COOKING, embedder.embed(list(COOKING)), strict=True):
        reports += discovery.observe(text, vector)
    [domain] = reports
    assert isinstance(domain, NewDomain)
    assert len(domain.texts) >= CONFIG.min_size and set(domain.examples) <= set(COOKING)
    assert domain.name in domain.system_prompt and domain.examples[0] in domain.system_prompt
    assert domain.nearest_similarity is not None and domain.nearest_similarity < CONFIG.clone_similarity


def test_one_question_asked_again_and_again_is_no_new_domain(embedder) -> None:
    """Repeats of one question (numbered, or in other case and punctuation) form a perfectly cohesive cluster of
    one question: no report; distinct questions of a topic still make one."""
    discovery = _discovery(embedder)
    texts = [f"How do I keep homemade bread from going stale? ({n})" for n in range(30)]
    texts += ["how do i keep HOMEMADE bread from going stale"] * 10
    reports = []
    for text, vector in zip(texts, embedder.embed(texts), strict=True):
        reports += discovery.observe(text, vector)
    assert reports == []
    for text, vector in zip(COOKING, embedder.embed(list(COOKING)), strict=True):
        reports += discovery.observe(text, vector)
    assert [type(r) for r in reports] == [NewDomain]


def test_the_same_topic_is_never_proposed_twice(embedder) -> None:
    """Once a topic was proposed, more requests of it (the agent not created yet) bring no second proposal."""
    discovery = _discovery(embedder)
    vectors = embedder.embed(list(COOKING))
    reports = []
    for _ in range(3):
        for text, vector in zip(COOKING, vectors, strict=True):
            reports += discovery.observe(text, vector)
    assert sum(isinstance(r, NewDomain) for r in reports) == 1
    assert all(r.agent.startswith("proposal:") for r in reports if isinstance(r, KnownDomain))


def test_repeated_requests_of_a_known_domain_are_no_clone(embedder) -> None:
    """Finance questions asked again and again form a tight cluster, but it is the finance agent's: no proposal."""
    discovery = _discovery(embedder)
    texts = list(FINANCE) * 3
    reports = []
    for text, vector in zip(texts, embedder.embed(texts), strict=True):
        reports += discovery.observe(text, vector)
    assert reports, "the repeated questions must form a cluster, or this test proves nothing"
    assert all(isinstance(r, KnownDomain) and r.agent == "finance" for r in reports)


def _decided(text: str, vector: np.ndarray, low: bool = True) -> RoutingDecided:
    return RoutingDecided(
        correlation_id=uuid.uuid4(),
        agent="general",
        scores={"general": 0.1},
        score=0.1,
        model_version="similarity-v1",
        low_confidence=low,
        latency_ms=1.0,
        embedding=pack_vector(vector.tolist()),
        text=text,
    )


def _proposer(embedder, mode: str = "approve", discovery: Discovery | None = None) -> AgentProposer:
    return AgentProposer(
        discovery if discovery is not None else Discovery(CONFIG),
        load_cards(),
        embedder,
        ProposerMetrics.create(CollectorRegistry()),
        mode=mode,  # type: ignore[arg-type]
        knowledge=lambda centroid: ["pool/doc.md"],
    )


def test_proposer_emits_one_proposal_and_in_auto_mode_the_agent(embedder) -> None:
    """Low-confidence decisions of a new topic yield one AgentProposed; auto mode adds its AgentCreated."""
    decisions = [_decided(t, v) for t, v in zip(COOKING, embedder.embed(list(COOKING)), strict=True)]
    confident = [_decided(t, v, low=False) for t, v in zip(COOKING, embedder.embed(list(COOKING)), strict=True)]
    assert _proposer(embedder).handle_decisions(confident) == []
    out = _proposer(embedder).handle_decisions(decisions)
    [proposal] = [o.event for o in out]
    assert isinstance(proposal, AgentProposed) and proposal.knowledge == ("pool/doc.md",)
    assert out[0].topic is Topic.AGENT_LIFECYCLE and out[0].key == proposal.card.name
    auto = [o.event for o in _proposer(embedder, "auto").handle_decisions(decisions)]
    assert [e.type for e in auto] == ["AgentProposed", "AgentCreated"]
    assert auto[1].proposal_id == auto[0].proposal_id and auto[1].card == auto[0].card  # type: ignore[attr-defined]


def test_a_restarted_proposer_remembers_earlier_proposals(embedder) -> None:
    """Proposals read back from the lifecycle log keep a restarted proposer from proposing the topic again."""
    decisions = [_decided(t, v) for t, v in zip(COOKING, embedder.embed(list(COOKING)), strict=True)]
    [first] = [o.event for o in _proposer(embedder).handle_decisions(decisions)]
    restarted = _proposer(embedder)
    restarted.handle_lifecycle([first])
    assert restarted.handle_decisions(decisions) == []


def _rated(decided: RoutingDecided, positive: bool, preferred: str | None = None) -> TrainingExample:
    """The training example the streams join makes of a decision and its feedback."""
    return decided.caused(
        TrainingExample,
        producer="streams",
        text=decided.text,
        embedding=decided.embedding,
        agent=decided.agent,
        scores=decided.scores,
        rating=1 if positive else -1,
        positive=positive,
        preferred_agent=preferred,
    )


def test_a_request_counts_once_and_a_withdrawn_one_never_comes_back() -> None:
    """One request id reaching discovery twice (low-confidence, then rated bad) is one request; a withdrawn request
    leaves the window, and one withdrawn before it arrives is never taken in."""
    rng = np.random.default_rng(3)
    vectors = _blobs(rng, np.eye(1, 32), 3, 0.1)
    discovery = Discovery(CONFIG)
    discovery.observe("a", vectors[0], "r1")
    discovery.observe("a", vectors[0], "r1")
    discovery.observe("b", vectors[1], "r2")
    assert len(discovery) == 2
    assert discovery.withdraw("r1") and len(discovery) == 1
    discovery.observe("a", vectors[0], "r1")
    assert not discovery.withdraw("r3")
    discovery.observe("c", vectors[2], "r3")
    assert len(discovery) == 1


def test_confidently_routed_requests_rated_bad_become_one_proposal(embedder) -> None:
    """Cooking requests routed confidently (no low-confidence signal) but rated bad are unserved: one proposal."""
    confident = [_decided(t, v, low=False) for t, v in zip(COOKING, embedder.embed(list(COOKING)), strict=True)]
    proposer = _proposer(embedder)
    assert proposer.handle_decisions(confident) == []
    [proposal] = [o.event for o in proposer.handle_outcomes([_rated(d, positive=False) for d in confident])]
    assert isinstance(proposal, AgentProposed) and set(proposal.card.examples) <= set(COOKING)


def test_requests_served_after_all_make_no_proposal(embedder) -> None:
    """Low-confidence requests whose answers were rated good, and bad ratings that name an existing agent (a routing
    mistake, not a new domain), propose nothing; a correction naming an agent that does not exist does not count."""
    decisions = [_decided(t, v) for t, v in zip(COOKING, embedder.embed(list(COOKING)), strict=True)]
    proposer = _proposer(embedder)
    assert proposer.handle_outcomes([_rated(d, positive=True) for d in decisions]) == []
    assert proposer.handle_decisions(decisions) == []  # rated before they arrived: never taken in
    corrected = _proposer(embedder)
    assert corrected.handle_outcomes([_rated(d, positive=False, preferred="finance") for d in decisions]) == []
    assert corrected.handle_decisions(decisions) == []
    unknown = _proposer(embedder)
    out = unknown.handle_outcomes([_rated(d, positive=False, preferred="chef") for d in decisions])
    assert [o.event.type for o in out] == ["AgentProposed"]


def test_a_good_rating_takes_a_request_out_of_the_window(embedder) -> None:
    """Low-confidence requests already in the window leave it when their answers are rated good."""
    decisions = [_decided(t, v) for t, v in zip(COOKING, embedder.embed(list(COOKING)), strict=True)]
    discovery = Discovery(CONFIG)
    proposer = _proposer(embedder, discovery=discovery)
    first = decisions[: CONFIG.min_size - 1]  # one short of a cluster: no scan yet
    assert proposer.handle_decisions(first) == []
    assert len(discovery) == len(first)
    proposer.handle_outcomes([_rated(d, positive=True) for d in first])
    assert len(discovery) == 0


def _proposal(name: str = "cooking") -> AgentProposed:
    return AgentProposed(
        correlation_id=uuid.uuid4(),
        proposal_id=uuid.uuid4().hex[:8],
        card=AgentCard(name=name, description="Cooking questions"),
        knowledge=("pool/bread.md",),
        centroid=pack_vector([1.0, 0.0]),
        size=12,
        cohesion=0.2,
    )


def test_approval_creates_the_proposed_agent_once() -> None:
    """Approving a pending proposal yields its AgentCreated; approving it again is an error."""
    proposal = _proposal()
    created = approve(proposal.proposal_id, [proposal], {"general"})
    assert (created.card, created.proposal_id) == (proposal.card, proposal.proposal_id)
    assert created.knowledge == proposal.knowledge
    assert [s.status for s in proposal_states([proposal, created])] == ["approved"]
    with pytest.raises(ProposalError, match="already approved"):
        approve(proposal.proposal_id, [proposal, created], {"general", "cooking"})


def test_approving_an_unknown_proposal_is_a_clear_error() -> None:
    """An id no proposal has raises an error that names it and lists the pending ones."""
    proposal = _proposal()
    with pytest.raises(ProposalError, match=rf"no proposal 'nope'.*pending: {proposal.proposal_id}"):
        approve("nope", [proposal], set())


def test_approval_refuses_a_taken_name_but_accepts_another() -> None:
    """A proposal whose name an agent already has needs --name; an invalid name is refused."""
    proposal = _proposal("finance")
    with pytest.raises(ProposalError, match="already exists"):
        approve(proposal.proposal_id, [proposal], {"finance"})
    with pytest.raises(ProposalError, match="invalid agent name"):
        approve(proposal.proposal_id, [proposal], {"finance"}, name="Bad Name")
    assert approve(proposal.proposal_id, [proposal], {"finance"}, name="cooking").card.name == "cooking"


def test_catalog_adds_created_agents_and_keeps_its_state_when_a_listener_fails() -> None:
    """AgentCreated/AgentUpdated replace cards by name; a failing listener leaves the catalogue as it was."""
    base = {"general": AgentCard(name="general", description="g")}
    seen: list[list[str]] = []
    catalog = CardCatalog(base, lambda cards, changed: seen.append(sorted(cards)))
    card = AgentCard(name="cooking", description="c")
    catalog.handle([AgentCreated(correlation_id=uuid.uuid4(), card=card)])
    catalog.handle([AgentUpdated(correlation_id=uuid.uuid4(), card=card)])  # same card: no change
    assert sorted(catalog) == ["cooking", "general"] and seen == [["cooking", "general"]]

    def fail(cards, changed) -> None:
        raise RuntimeError("db down")

    failing = CardCatalog(base, fail)
    with pytest.raises(RuntimeError):
        failing.handle([AgentCreated(correlation_id=uuid.uuid4(), card=card)])
    assert sorted(failing) == ["general"]


def test_proposal_centroid_round_trips() -> None:
    """The centroid travels in the wire form of vectors."""
    assert unpack_vector(_proposal().centroid) == [1.0, 0.0]


def test_the_learner_trains_on_agents_created_at_runtime(tmp_path, embedder) -> None:
    """After use_agents with a created card, outcomes of the new agent are learned instead of skipped."""
    from smolit.infra.registry import open_registry
    from smolit.learner import Learner, LearnerMetrics
    from smolit.learner.trainer import Outcome

    cards = load_cards()
    registry = open_registry(f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    learner = Learner(AgentFeatures.from_cards(cards, embedder), registry, LearnerMetrics.create(CollectorRegistry()))
    vector = embedder.embed([COOKING[0]])[0]
    assert learner.trainer.add([Outcome(vector, "cooking", True)]) == 0
    cards["cooking"] = AgentCard(name="cooking", description="Cooking and baking questions", examples=COOKING[:3])
    learner.use_agents(AgentFeatures.from_cards(cards, embedder))
    assert "cooking" in learner.trainer.features.agents
    assert learner.trainer.add([Outcome(vector, "cooking", True)]) == 1
