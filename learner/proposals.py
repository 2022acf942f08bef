"""Agent proposals: requests no agent served in, `AgentProposed` (and in auto mode `AgentCreated`) out.

Three consumer loops feed one `AgentProposer`: the decisions topic (the requests no agent was confident about),
the training-examples topic (requests with their feedback: a bad rating makes a confidently routed request
unserved too; a good rating, or a correction naming an existing agent, withdraws it), and the agent-lifecycle
topic, read from its start by every instance, which tells it which agents exist (so a cluster of a known domain is
never proposed as a clone) and which topics were proposed before (so none is proposed twice, across restarts too).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter

from smolit.contracts import (
    AgentCard,
    AgentCreated,
    AgentProposed,
    AgentUpdated,
    Event,
    LLMConfig,
    RoutingDecided,
    Topic,
    TrainingExample,
    pack_vector,
    unpack_vector,
)
from smolit.infra.kafka import Outgoing
from smolit.router.features import AgentFeatures

from .discovery import Discovery, KnownDomain, NewDomain

log = structlog.get_logger("smolit.learner.proposals")
PRODUCER = "learner"


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class ProposerMetrics(NamedTuple):
    collected: Counter
    clusters: Counter
    proposals: Counter
    feedback: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ProposerMetrics:
        return cls(
            collected=Counter(
                "smolit_discovery_requests_total", "Low-confidence requests collected for clustering", registry=registry
            ),
            clusters=Counter(
                "smolit_discovery_clusters_total",
                "Coherent clusters found, by verdict (new, known)",
                ["verdict"],
                registry=registry,
            ),
            proposals=Counter("smolit_agent_proposals_total", "New agents proposed", ["mode"], registry=registry),
            feedback=Counter(
                "smolit_discovery_feedback_total",
                "Rated requests seen by discovery, by verdict (unserved: collected; served: withdrawn)",
                ["verdict"],
                registry=registry,
            ),
        )


def proposal_card(domain: NewDomain) -> AgentCard:
    return AgentCard(
        name=domain.name,
        description=domain.description,
        examples=domain.examples,
        domain=domain.name,
        llm=LLMConfig(system_prompt=domain.system_prompt),
    )


class AgentProposer:
    def __init__(
        self,
        discovery: Discovery,
        cards: Mapping[str, AgentCard],
        embedder: TextEmbedder,
        metrics: ProposerMetrics,
        *,
        mode: Literal["approve", "auto"] = "approve",
        knowledge: Callable[[np.ndarray], list[str]] | None = None,
        namer: Callable[[NewDomain, set[str]], NewDomain] | None = None,
    ) -> None:
        """`namer`: rewords a new domain (e.g. `LLMNamer`) given the names already taken; None: top terms."""
        self._discovery = discovery
        self._namer = namer
        self._cards = dict(cards)
        self._embedder = embedder
        self._metrics = metrics
        self._mode = mode
        self._knowledge = knowledge
        self._lock = threading.Lock()  # the two loops run in two threads
        self._set_agents()

    def _set_agents(self) -> None:
        features = AgentFeatures.from_cards(self._cards, self._embedder)
        self._discovery.set_agents(features.agents, features.card_vectors())

    def handle_lifecycle(self, events: Sequence[Event]) -> list[Outgoing]:
        with self._lock:
            changed = False
            for event in events:
                if isinstance(event, AgentCreated | AgentUpdated) and self._cards.get(event.card.name) != event.card:
                    self._cards[event.card.name] = event.card
                    changed = True
                elif isinstance(event, AgentProposed):
                    self._discovery.remember_proposal(event.proposal_id, np.asarray(unpack_vector(event.centroid)))
            if changed:
                self._set_agents()
        return []

    def handle_decisions(self, events: Sequence[Event]) -> list[Outgoing]:
        outgoing: list[Outgoing] = []
        with self._lock:
            for event in events:
                if not isinstance(event, RoutingDecided) or not event.low_confidence or event.small_talk:
                    continue
                if not event.text:
                    continue
                self._metrics.collected.inc()
                vector = np.asarray(unpack_vector(event.embedding), dtype=np.float32)
                for report in self._discovery.observe(event.text, vector, str(event.correlation_id)):
                    outgoing += self._report(report, event)
        return outgoing

    def handle_outcomes(self, events: Sequence[Event]) -> list[Outgoing]:
        """Feedback: a request whose answer was rated bad is unserved even if the router was confident (a new
        domain's requests often go confidently, and wrongly, to an existing agent); one rated good, or corrected to
        an agent that exists, was or could have been served by it (a routing mistake the router learns from, or a
        bad answer the flag rule judges), so it leaves the window. Failures and unrated requests say nothing about
        the domain."""
        outgoing: list[Outgoing] = []
        with self._lock:
            for event in events:
                if not isinstance(event, TrainingExample) or event.failed or event.positive is None or not event.text:
                    continue
                key = str(event.correlation_id)
                if event.positive or event.preferred_agent in self._cards:
                    self._metrics.feedback.labels("served").inc()
                    self._discovery.withdraw(key)
                    continue
                self._metrics.feedback.labels("unserved").inc()
                vector = np.asarray(unpack_vector(event.embedding), dtype=np.float32)
                for report in self._discovery.observe(event.text, vector, key):
                    outgoing += self._report(report, event)
        return outgoing

    def _report(self, report: NewDomain | KnownDomain, cause: RoutingDecided | TrainingExample) -> list[Outgoing]:
        if isinstance(report, KnownDomain):
            self._metrics.clusters.labels("known").inc()
            log.info("low-confidence cluster of a known domain", agent=report.agent, size=report.size)
            return []
        self._metrics.clusters.labels("new").inc()
        if self._namer is not None:
            report = self._namer(report, self._discovery.taken_names() | set(self._cards))
        card = proposal_card(report)
        knowledge = tuple(self._knowledge(report.centroid)) if self._knowledge is not None else ()
        proposal = cause.caused(
            AgentProposed,
            producer=PRODUCER,
            proposal_id=uuid.uuid4().hex[:8],
            card=card,
            knowledge=knowledge,
            centroid=pack_vector(report.centroid.tolist()),
            size=len(report.texts),
            cohesion=round(report.cohesion, 4),
            terms=report.terms,
            nearest_agent=report.nearest_agent,
            nearest_similarity=None if report.nearest_similarity is None else round(report.nearest_similarity, 4),
            named_by=report.named_by,
        )
        self._discovery.remember_proposal(proposal.proposal_id, report.centroid)
        self._metrics.proposals.labels(self._mode).inc()
        log.info(
            "new agent proposed",
            proposal_id=proposal.proposal_id,
            agent=card.name,
            size=proposal.size,
            cohesion=proposal.cohesion,
            knowledge=len(knowledge),
            mode=self._mode,
        )
        out = [Outgoing(Topic.AGENT_LIFECYCLE, card.name, proposal)]
        if self._mode == "auto":
            created = proposal.caused(
                AgentCreated, producer=PRODUCER, card=card, proposal_id=proposal.proposal_id, knowledge=knowledge
            )
            self._cards[card.name] = card
            self._set_agents()
            out.append(Outgoing(Topic.AGENT_LIFECYCLE, card.name, created))
        return out
