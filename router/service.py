"""Router service: `RequestReceived` batches in, `RoutingDecided` + `TaskAssigned` out."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from smolit.contracts import (
    AgentCard,
    Event,
    RequestReceived,
    RoutingDecided,
    TaskAssigned,
    Topic,
    pack_vector,
)
from smolit.infra.kafka import Outgoing

from .policy import decide
from .scoring import SimilarityScorer, TextEmbedder

log = structlog.get_logger("smolit.router")
PRODUCER = "router"


class UnexpectedEvent(TypeError):
    """An event of the wrong type arrived on the requests topic."""


class RouterMetrics(NamedTuple):
    decisions: Counter
    low_confidence: Counter
    routing_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RouterMetrics:
        return cls(
            decisions=Counter("smolit_routing_decisions_total", "Routing decisions", ["agent"], registry=registry),
            low_confidence=Counter(
                "smolit_routing_low_confidence_total",
                "Requests sent to the fallback agent",
                registry=registry,
            ),
            routing_seconds=Histogram(
                "smolit_routing_seconds",
                "Embedding + scoring time per batch",
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            ),
        )


class Router:
    """Embeds a batch of requests once, scores every agent, applies the policy."""

    def __init__(
        self,
        cards: Mapping[str, AgentCard],
        embedder: TextEmbedder,
        *,
        fallback: str,
        threshold: float,
        metrics: RouterMetrics,
    ) -> None:
        if fallback not in cards:
            raise ValueError(f"fallback agent {fallback!r} has no card (setting SMOLIT_FALLBACK_AGENT)")
        self._embedder = embedder
        self._scorer = SimilarityScorer(cards, embedder)
        self._fallback = fallback
        self._threshold = threshold
        self._metrics = metrics

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        requests = []
        for event in events:
            if not isinstance(event, RequestReceived):
                raise UnexpectedEvent(f"router expects RequestReceived, got {event.type}")  # type: ignore[attr-defined]
            requests.append(event)
        started = time.perf_counter()
        embeddings = self._embedder.embed([r.text for r in requests])
        all_scores = self._scorer.score_dicts(embeddings)
        elapsed = time.perf_counter() - started
        self._metrics.routing_seconds.observe(elapsed)
        outputs: list[Outgoing] = []
        for request, vector, scores in zip(requests, embeddings, all_scores, strict=True):
            decision = decide(scores, fallback=self._fallback, threshold=self._threshold, requested=request.agent)
            packed = pack_vector(vector.tolist())
            decided = request.caused(
                RoutingDecided,
                producer=PRODUCER,
                agent=decision.agent,
                scores=scores,
                score=decision.score,
                model_version=self._scorer.version,
                low_confidence=decision.low_confidence,
                latency_ms=elapsed * 1000,
                embedding=packed,
                text=request.text,
            )
            task = decided.caused(
                TaskAssigned,
                producer=PRODUCER,
                agent=decision.agent,
                text=request.text,
                conversation_id=request.conversation_id,
                embedding=packed,
            )
            outputs += [
                Outgoing(Topic.DECISIONS, str(request.request_id), decided),
                Outgoing(Topic.TASKS, decision.agent, task),
            ]
            self._metrics.decisions.labels(decision.agent).inc()
            if decision.low_confidence:
                self._metrics.low_confidence.inc()
            log.info(
                "routed",
                request_id=str(request.request_id),
                agent=decision.agent,
                score=round(decision.score, 4),
                low_confidence=decision.low_confidence,
            )
        return outputs
