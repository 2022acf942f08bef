"""Agent runtime: one consumer group for all agents; each task is answered by the agent its key names."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import psycopg
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from smolit.contracts import (
    AgentCard,
    AnswerProduced,
    Event,
    Source,
    TaskAssigned,
    TaskFailed,
    Topic,
    unpack_vector,
)
from smolit.infra.kafka import Outgoing, RetryableError
from smolit.infra.knowledge import Hit, KnowledgeStore
from smolit.infra.llm import LLM, Completion, LLMError, LLMUnavailable, Passage

log = structlog.get_logger("smolit.agents")
PRODUCER = "agents"


class AgentMetrics(NamedTuple):
    answers: Counter
    failures: Counter
    answer_seconds: Histogram
    tokens: Counter
    cost: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AgentMetrics:
        return cls(
            answers=Counter("smolit_agent_answers_total", "Answers produced", ["agent"], registry=registry),
            failures=Counter("smolit_agent_failures_total", "Tasks failed", ["agent"], registry=registry),
            answer_seconds=Histogram(
                "smolit_agent_answer_seconds",
                "Task receipt to answer",
                ["agent"],
                registry=registry,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
            tokens=Counter("smolit_llm_tokens_total", "LLM tokens", ["agent", "kind"], registry=registry),
            cost=Counter("smolit_llm_cost_usd_total", "LLM cost in USD", ["agent"], registry=registry),
        )


class AgentRuntime:
    """Answers `TaskAssigned` events: retrieve from the agent's collection, then ask the agent's LLM."""

    def __init__(
        self,
        cards: Mapping[str, AgentCard],
        store: KnowledgeStore,
        llms: Mapping[str, LLM],
        *,
        default_backend: str,
        default_top_k: int,
        metrics: AgentMetrics,
        llm_attempts: int = 3,
    ) -> None:
        self._cards = dict(cards)
        self._store = store
        self._llms = llms
        self._default_backend = default_backend
        self._default_top_k = default_top_k
        self._metrics = metrics
        self._llm_attempts = llm_attempts

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        outputs: list[Outgoing] = []
        for event in events:
            if not isinstance(event, TaskAssigned):
                raise TypeError(f"agents expect TaskAssigned, got {event.type}")  # type: ignore[attr-defined]
            result = self._answer(event)
            outputs.append(Outgoing(Topic.ANSWERS, str(event.correlation_id), result))
        return outputs

    def _answer(self, task: TaskAssigned) -> AnswerProduced | TaskFailed:
        started = time.perf_counter()
        card = self._cards.get(task.agent)
        if card is None:
            return self._fail(task, f"unknown agent {task.agent!r}: no card with that name is loaded")
        backend = card.llm.backend or self._default_backend
        llm = self._llms.get(backend)
        if llm is None:
            return self._fail(task, f"agent {card.name!r} asks for LLM backend {backend!r}, which is not configured")
        hits = self._retrieve(card, task)
        passages = [Passage(text=h.text, source=h.source, title=h.title, score=h.score) for h in hits]
        try:
            completion = self._complete(llm, task.text, passages, card)
        except LLMUnavailable as exc:
            return self._fail(task, f"LLM {backend} unavailable after {self._llm_attempts} attempts: {exc}", True)
        except LLMError as exc:
            return self._fail(task, f"LLM {backend} error: {exc}")
        elapsed = time.perf_counter() - started
        self._record(card.name, elapsed, completion.prompt_tokens, completion.completion_tokens, completion.cost_usd)
        log.info(
            "answered",
            request_id=str(task.correlation_id),
            agent=card.name,
            sources=len(hits),
            latency_ms=round(elapsed * 1000, 2),
        )
        return task.caused(
            AnswerProduced,
            producer=PRODUCER,
            agent=card.name,
            answer=completion.text,
            sources=tuple(_source(h) for h in hits),
            backend=completion.backend,
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            latency_ms=elapsed * 1000,
        )

    def _retrieve(self, card: AgentCard, task: TaskAssigned) -> list[Hit]:
        vector = np.asarray(unpack_vector(task.embedding), dtype=np.float32)
        top_k = card.retrieval.top_k or self._default_top_k
        try:
            return self._store.search(card.knowledge_collection, vector, top_k, card.retrieval.min_score)
        except psycopg.OperationalError as exc:  # database away: the loop retries the batch with backoff
            raise RetryableError(f"knowledge search failed: {exc}") from exc

    def _complete(self, llm: LLM, question: str, passages: list[Passage], card: AgentCard) -> Completion:
        for attempt in Retrying(
            retry=retry_if_exception_type(LLMUnavailable),
            stop=stop_after_attempt(self._llm_attempts),
            wait=wait_exponential(multiplier=0.5, max=8),
            reraise=True,
        ):
            with attempt:
                return llm.complete(question, passages, card.llm)
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, task: TaskAssigned, reason: str, retryable: bool = False) -> TaskFailed:
        self._metrics.failures.labels(task.agent).inc()
        log.warning("task failed", request_id=str(task.correlation_id), agent=task.agent, reason=reason)
        return task.caused(TaskFailed, producer=PRODUCER, agent=task.agent, reason=reason, retryable=retryable)

    def _record(self, agent: str, seconds: float, prompt: int, completion: int, cost: float) -> None:
        self._metrics.answers.labels(agent).inc()
        self._metrics.answer_seconds.labels(agent).observe(seconds)
        self._metrics.tokens.labels(agent, "prompt").inc(prompt)
        self._metrics.tokens.labels(agent, "completion").inc(completion)
        self._metrics.cost.labels(agent).inc(cost)


def _source(hit: Hit) -> Source:
    return Source(
        chunk_id=hit.chunk_id,
        source=hit.source,
        title=hit.title,
        score=round(hit.score, 6),
        snippet=hit.text[:240],
    )
