"""Agent runtime: one consumer group for all agents; each task is answered by the agent its key names.

Consumes tasks, subqueries and (for subanswers) the answers topic. An agent whose answer needs another agent's part
asks with `SubqueryRequested`, parks its own part in Postgres and returns at once; the subanswer (or the deadline
sweep) finishes it. No consumer thread ever waits for another agent.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import psycopg
import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from smolit.contracts import (
    AgentCard,
    AnswerProduced,
    Clause,
    Event,
    ModelOutcomeRecorded,
    Source,
    SubqueryAnswered,
    SubqueryRequested,
    TaskAssigned,
    TaskFailed,
    Topic,
    pack_vector,
    unpack_vector,
)
from smolit.infra.kafka import Outgoing, RetryableError
from smolit.infra.knowledge import Hit, KnowledgeStore
from smolit.infra.llm import LLM, Completion, CompletionCache, LLMError, LLMUnavailable, Passage, cache_key

from . import smalltalk
from .agent_metrics import AgentMetrics
from .attachments import AttachmentReader
from .parking import Draft, ParkingLot
from .subqueries import Consult, SubqueryPolicy, SubResult, merge_answers, plan_consults, subanswer_passages
from .tools import ToolRunner, openai_specs, triggered
from .variants import Choice, Trials

log = structlog.get_logger("smolit.agents")
PRODUCER = "agents"
MAX_TOOL_CALLS = 4
"""Most declared-tool calls one answer may make (one round: the model then answers with their results)."""
Work = TaskAssigned | SubqueryRequested
"""What an agent answers: a routed task, or another agent's subquery."""


class TextEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class _Failed(Exception):
    """This work item cannot be answered; `reason` says why."""

    def __init__(self, reason: str, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class AgentRuntime:
    """Answers `TaskAssigned` and `SubqueryRequested` events: retrieve from the agent's collection, ask its LLM,
    consult other agents for the clauses that belong to them, and merge their subanswers."""

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
        llm_backoff_s: float = 0.5,
        fallback_backend: str | None = None,
        cache: CompletionCache | None = None,
        parking: ParkingLot | None = None,
        policy: SubqueryPolicy | None = None,
        embedder: TextEmbedder | None = None,
        tools: ToolRunner | None = None,
        trials: Trials | None = None,
        attachments: AttachmentReader | None = None,
    ) -> None:
        self._cards = dict(cards)
        # Variant cards on trial (learner challengers, agent A/B tests); without it the champion answers everything.
        self._trials = trials
        self._store = store
        self._llms = llms
        self._default_backend = default_backend
        self._default_top_k = default_top_k
        self._metrics = metrics
        self._llm_attempts = llm_attempts
        self._llm_backoff_s = llm_backoff_s
        self._fallback_backend = fallback_backend
        self._cache = cache
        self._parking = parking
        # Embeds the questions an LLM asks with the consult_agent tool; without one the tool is not offered.
        self._embedder = embedder
        # Runs the declared tools agent cards list; without one, cards' `tools` are not offered.
        self._tools = tools
        # Reads request attachments with the model manager's OCR model; without one, attachments are ignored.
        self._attachments = attachments
        # Without a parking lot there is nowhere to wait for subanswers: subqueries are off.
        self._policy = policy or SubqueryPolicy()
        if parking is None:
            self._policy = SubqueryPolicy(max_depth=0, budget=0)

    @property
    def cards(self) -> Mapping[str, AgentCard]:
        return self._cards

    def use_cards(self, cards: Mapping[str, AgentCard]) -> None:
        """Answer for these agents from now on (agents created or updated at runtime); one reference swap."""
        self._cards = dict(cards)

    def choose(self, work: Work) -> Choice | None:
        """The card that answers `work` (None: unknown agent). Deterministic for a conversation while the trials do
        not change, so a parked answer is finished with the card that started it."""
        card = self._cards.get(work.agent)
        if card is None or self._trials is None or not isinstance(work, TaskAssigned):
            return None if card is None else Choice(card)
        return self._trials.choose(card, work.conversation_id)

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        outputs: list[Outgoing] = []
        for event in events:
            if isinstance(event, TaskAssigned | SubqueryRequested):
                outputs += self._start(event)
            elif isinstance(event, SubqueryAnswered):
                outputs += self._collect(event)
            elif isinstance(event, AnswerProduced | TaskFailed):
                continue  # the answers topic is read for subanswers; final answers are the gateway's
            else:
                raise TypeError(f"agents do not handle {event.type}")  # type: ignore[attr-defined]
        return outputs

    # ---- answering ------------------------------------------------------------------------------------------

    def _start(self, work: Work) -> list[Outgoing]:
        started = time.time()
        if isinstance(work, SubqueryRequested):
            self._metrics.subqueries.labels(work.agent, "received").inc()
        choice = self.choose(work)
        audits: list[Event] = []  # ToolCalled and ModelOutcomeRecorded events, published even when the answer fails
        try:
            if choice is None:
                raise _Failed(f"unknown agent {work.agent!r}: no card with that name is loaded")
            card = choice.card
            if isinstance(work, SubqueryRequested) and work.agent in work.chain:
                raise _Failed(f"loop guard: agent {work.agent!r} is already in the chain {' -> '.join(work.chain)}")
            if work.deadline is not None and work.deadline <= datetime.now(UTC):
                raise _Failed("the deadline passed before the agent got to it")
            if isinstance(work, TaskAssigned) and work.small_talk:
                return [self._small_talk(work, started)]
            consults = self._plan(card, work)
            text, embedding = _own_part(work, [c.clause for c in consults])
            if isinstance(work, TaskAssigned) and work.context:  # a follow-up: answer it with the turn it follows
                text = "\n".join((*work.context, text))
            offered = self._offer(card, work, consults)
            # Outcomes of attachment readings are published even if answering fails.
            extra, uses = self._attachments.for_work(card, work, audits) if self._attachments else ([], [])
            draft, asked = self._draft(card, text, embedding, started, offered, work, audits, extra)
            draft = draft.model_copy(update={"models": tuple(uses)})
            if asked:
                consults += self._tool_consults(asked, self._budget(work) - len(consults))
                draft = draft.model_copy(update={"rewrite": True})
            draft = draft.model_copy(update={"subqueries": len(consults)})
        except _Failed as failed:
            return [*_audit(audits), self._fail(work, failed.reason, failed.retryable, choice)]
        if not consults:
            return [*_audit(audits), self._final(work, draft, [])]
        return _audit(audits) + self._ask(card, work, draft, consults)

    def _small_talk(self, work: TaskAssigned, started: float) -> Outgoing:
        """A short reply to a greeting or thanks: no knowledge search, no LLM call, no tokens."""
        assert work.small_talk is not None
        draft = Draft(
            answer=smalltalk.reply(work.small_talk, self._cards),
            sources=(),
            backend=smalltalk.BACKEND,
            started_at=started,
            question=work.text,
        )
        return self._final(work, draft, [])

    def _plan(self, card: AgentCard, work: Work) -> list[Consult]:
        if isinstance(work, TaskAssigned):
            chain, depth, budget, clauses = (), 0, self._policy.budget, work.clauses
        else:
            chain, depth, budget, clauses = work.chain, work.depth, work.budget, ()
        return plan_consults(card, clauses, chain=chain, depth=depth, budget=budget, policy=self._policy)

    def _budget(self, work: Work) -> int:
        return self._policy.budget if isinstance(work, TaskAssigned) else work.budget

    def _offer(self, card: AgentCard, work: Work, planned: list[Consult]) -> tuple[str, ...]:
        """Agents the LLM may still consult through the `consult_agent` tool."""
        depth, chain = (0, ()) if isinstance(work, TaskAssigned) else (work.depth, work.chain)
        if self._embedder is None or depth >= self._policy.max_depth or self._budget(work) <= len(planned):
            return ()
        taken = {*chain, card.name, *(c.agent for c in planned)}
        return tuple(a for a in card.consults if a not in taken)

    def _tool_consults(self, asked: tuple[tuple[str, str], ...], room: int) -> list[Consult]:
        asked = asked[: max(room, 0)]
        if not asked or self._embedder is None:
            return []
        vectors = self._embedder.embed([question for _, question in asked])  # one call for all asked questions
        return [
            Consult(agent, Clause(text=question, embedding=pack_vector(vector.tolist()), scores={}))
            for (agent, question), vector in zip(asked, vectors, strict=True)
        ]

    def _draft(
        self,
        card: AgentCard,
        text: str,
        embedding: str | None,
        started: float,
        offered: tuple[str, ...] = (),
        work: Work | None = None,
        audits: list[Event] | None = None,
        extra: Sequence[Passage] = (),
    ) -> tuple[Draft, tuple[tuple[str, str], ...]]:
        hits = self._retrieve(card, embedding) if embedding else []
        # The request's own attachments come first: they are what the question is about.
        passages = [*extra, *(Passage(text=h.text, source=h.source, title=h.title, score=h.score) for h in hits)]
        notes: list[str] = []
        specs: tuple[dict[str, Any], ...] = ()
        if self._tools is not None and card.tools and work is not None:
            if (card.llm.backend or self._default_backend) == "extractive":
                # No tool calling without generation: the documented request patterns trigger the tools instead.
                for name, args in triggered(card, text):
                    outcome = self._tools.call(card, name, args, work, "pattern")
                    (audits if audits is not None else []).append(outcome.event)
                    notes.append(outcome.text)
            else:
                specs = tuple(openai_specs(card.tools))
        completion, cache_hit = self._generate(card, text, passages, offered, specs)
        if completion.tool_calls and self._tools is not None and work is not None:
            completion = self._use_tools(card, text, passages, completion, work, audits)
        answer = "\n\n".join([*notes, completion.text])
        draft = Draft(
            answer=answer,
            sources=(*(_attachment_source(p) for p in extra), *(_source(h) for h in hits)),
            backend=completion.backend,
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            cache_hit=cache_hit,
            started_at=started,
            question=text,
            passages=tuple(passages),
        )
        return draft, completion.consults

    def _use_tools(
        self,
        card: AgentCard,
        question: str,
        passages: list[Passage],
        first: Completion,
        work: Work,
        audits: list[Event] | None,
    ) -> Completion:
        """Run the model's declared-tool calls, then let it answer once more with their results as extra passages
        (numbered after the retrieved ones, so citations of those stay valid). No tools are offered the second time."""
        assert self._tools is not None
        outcomes = [self._tools.call(card, n, raw, work, "llm") for n, raw in first.tool_calls[:MAX_TOOL_CALLS]]
        if audits is not None:
            audits += [o.event for o in outcomes]
        extra = [Passage(text=o.text, source=f"tool:{o.tool}", title=None, score=1.0) for o in outcomes]
        second, _ = self._generate(card, question, passages + extra)
        return dataclasses.replace(
            second,
            prompt_tokens=first.prompt_tokens + second.prompt_tokens,
            completion_tokens=first.completion_tokens + second.completion_tokens,
            cost_usd=first.cost_usd + second.cost_usd,
            consults=first.consults,
        )

    def _retrieve(self, card: AgentCard, embedding: str) -> list[Hit]:
        vector = np.asarray(unpack_vector(embedding), dtype=np.float32)
        top_k = card.retrieval.top_k or self._default_top_k
        try:
            return self._store.search(card.knowledge_collection, vector, top_k, card.retrieval.min_score)
        except psycopg.OperationalError as exc:  # database away: the loop retries the batch with backoff
            raise RetryableError(f"knowledge search failed: {exc}") from exc

    def _generate(
        self,
        card: AgentCard,
        question: str,
        passages: list[Passage],
        offered: tuple[str, ...] = (),
        specs: tuple[dict[str, Any], ...] = (),
    ) -> tuple[Completion, bool]:
        """The agent's backend with retries; when it stays unavailable, the fallback backend if one is set."""
        backend = card.llm.backend or self._default_backend
        try:
            return self._call(card, backend, question, passages, offered, specs)
        except LLMUnavailable as exc:
            fallback = card.llm.fallback_backend or self._fallback_backend
            reason = f"LLM {backend} unavailable after {self._llm_attempts} attempts: {exc}"
            if fallback is None or fallback == backend:
                raise _Failed(reason, retryable=True) from exc
            log.warning("llm fallback", agent=card.name, backend=backend, fallback=fallback, error=str(exc))
            self._metrics.fallbacks.labels(card.name, fallback).inc()
            try:
                return self._call(card, fallback, question, passages, offered, specs)
            except LLMError as again:
                raise _Failed(f"{reason}; fallback {fallback} failed too: {again}", again.retryable) from again
        except LLMError as exc:
            raise _Failed(f"LLM {backend} error: {exc}") from exc

    def _call(
        self,
        card: AgentCard,
        backend: str,
        question: str,
        passages: list[Passage],
        offered: tuple[str, ...],
        specs: tuple[dict[str, Any], ...] = (),
    ) -> tuple[Completion, bool]:
        llm = self._llms.get(backend)
        if llm is None:
            raise _Failed(f"agent {card.name!r} asks for LLM backend {backend!r}, which is not configured")
        key = None
        if self._cache is not None and card.llm.cache:
            model = card.llm.model or getattr(llm, "default_model", None)
            key = cache_key(backend, model, question, passages, card.llm, offered, specs)
            if (cached := self._cache.get(key)) is not None:
                self._metrics.cache_hits.labels(card.name).inc()
                return cached, True
        for attempt in Retrying(
            retry=retry_if_exception_type(LLMUnavailable),
            stop=stop_after_attempt(self._llm_attempts),
            wait=wait_exponential(multiplier=self._llm_backoff_s, max=8),
            reraise=True,
        ):
            with attempt:
                extra = {"tools": specs} if specs else {}  # LLMs from before tools keep working
                completion = llm.complete(question, passages, card.llm, offered, **extra)
        if key is not None:
            self._cache.put(key, completion)  # type: ignore[union-attr]
        return completion, False

    # ---- subqueries -----------------------------------------------------------------------------------------

    def _ask(self, card: AgentCard, work: Work, draft: Draft, consults: list[Consult]) -> list[Outgoing]:
        assert self._parking is not None  # plan_consults returns nothing without a parking lot
        deadline = datetime.now(UTC) + timedelta(seconds=self._policy.timeout_s)
        if work.deadline is not None:
            deadline = min(deadline, work.deadline)
        budget = self._budget(work)
        if isinstance(work, TaskAssigned):
            chain, depth = (card.name,), 1
        else:
            chain, depth = (*work.chain, card.name), work.depth + 1
        subqueries = [
            SubqueryRequested(
                # Derived ids: a redelivered task asks the same subqueries again, and the asked agent dedupes them.
                event_id=uuid.uuid5(work.event_id, consult.agent),
                correlation_id=work.correlation_id,
                causation_id=work.event_id,
                producer=PRODUCER,
                from_agent=card.name,
                agent=consult.agent,
                text=consult.clause.text,
                parent_event_id=work.event_id,
                depth=depth,
                deadline=deadline,
                budget=max(budget - len(consults), 0),
                chain=chain,
                embedding=consult.clause.embedding,
            )
            for consult in consults
        ]
        self._parking.park(work, draft, subqueries, deadline)
        for sub in subqueries:
            self._metrics.subqueries.labels(card.name, "sent").inc()
            log.info("subquery sent", request_id=str(work.correlation_id), agent=card.name, to=sub.agent)
        return [Outgoing(Topic.SUBQUERIES, sub.agent, sub) for sub in subqueries]

    def _collect(self, answer: SubqueryAnswered) -> list[Outgoing]:
        if self._parking is None:
            return []
        return self._parking.collect(answer, self._finish)

    def sweep(self, now: datetime | None = None) -> list[tuple[uuid.UUID, Outgoing]]:
        """Finish parked answers whose subqueries ran out of time (run by the service's deadline sweeper)."""
        if self._parking is None:
            return []
        return self._parking.sweep(now or datetime.now(UTC), self._finish)

    def delivered(self, parent_ids: Sequence[uuid.UUID]) -> None:
        if self._parking is not None:
            self._parking.delivered(parent_ids)

    def _finish(self, parent: Event, draft: Draft, results: Sequence[SubResult]) -> Outgoing:
        assert isinstance(parent, TaskAssigned | SubqueryRequested)
        for result in results:
            outcome = "expired" if result.answer is None else "failed" if result.answer.error else "answered"
            self._metrics.subqueries.labels(parent.agent, outcome).inc()
        return self._final(parent, draft, results)

    # ---- results --------------------------------------------------------------------------------------------

    def _final(self, work: Work, draft: Draft, results: Sequence[SubResult]) -> Outgoing:
        draft = self._rewrite(work, draft, results)
        text, sources = merge_answers(draft.answer, draft.sources, results, quote=not draft.rewrite)
        answered = [r.answer for r in results if r.answer is not None]
        prompt = draft.prompt_tokens + sum(a.prompt_tokens for a in answered)
        completion = draft.completion_tokens + sum(a.completion_tokens for a in answered)
        cost = draft.cost_usd + sum(a.cost_usd for a in answered)
        elapsed = max(time.time() - draft.started_at, 0.0)
        self._record(work.agent, elapsed, draft.prompt_tokens, draft.completion_tokens, draft.cost_usd)
        log.info(
            "answered",
            request_id=str(work.correlation_id),
            agent=work.agent,
            sources=len(sources),
            subqueries=draft.subqueries,
            cache_hit=draft.cache_hit,
            latency_ms=round(elapsed * 1000, 2),
        )
        if isinstance(work, SubqueryRequested):
            answer: Event = work.caused(
                SubqueryAnswered,
                producer=PRODUCER,
                agent=work.agent,
                subquery_event_id=work.event_id,
                answer=text,
                sources=tuple(sources),
                latency_ms=elapsed * 1000,
                backend=draft.backend,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=cost,
            )
        else:
            choice = self.choose(work)
            answer = work.caused(
                AnswerProduced,
                producer=PRODUCER,
                agent=work.agent,
                answer=text,
                sources=tuple(sources),
                backend=draft.backend,
                model=draft.model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=cost,
                latency_ms=elapsed * 1000,
                cache_hit=draft.cache_hit,
                subqueries=draft.subqueries,
                card_version=choice.card.version if choice else None,
                experiment_id=choice.experiment_id if choice else None,
                arm=choice.arm if choice else None,
                models=draft.models,
            )
        return Outgoing(Topic.ANSWERS, str(work.correlation_id), answer)

    def _rewrite(self, work: Work, draft: Draft, results: Sequence[SubResult]) -> Draft:
        """When the LLM asked for the subqueries, it writes the final answer from its passages plus the subanswers'
        (numbered after its own, so citations match the joint source list). If that fails, the answers are quoted."""
        choice = self.choose(work)
        answered = [r.answer for r in results if r.answer is not None and not r.answer.error]
        if not draft.rewrite or choice is None:
            return draft.model_copy(update={"rewrite": False})
        card = choice.card
        passages = list(draft.passages) + [p for a in answered for p in subanswer_passages(a)]
        try:
            completion, _ = self._generate(card, draft.question, passages)
        except _Failed as failed:
            log.warning("rewrite with subanswers failed", agent=card.name, reason=failed.reason)
            return draft.model_copy(update={"rewrite": False})
        return draft.model_copy(
            update={
                "answer": completion.text,
                "prompt_tokens": draft.prompt_tokens + completion.prompt_tokens,
                "completion_tokens": draft.completion_tokens + completion.completion_tokens,
                "cost_usd": draft.cost_usd + completion.cost_usd,
            }
        )

    def _fail(self, work: Work, reason: str, retryable: bool = False, choice: Choice | None = None) -> Outgoing:
        self._metrics.failures.labels(work.agent).inc()
        log.warning("task failed", request_id=str(work.correlation_id), agent=work.agent, reason=reason)
        if isinstance(work, SubqueryRequested):
            # A failed subquery is a SubqueryAnswered with `error`: a TaskFailed would read as the request failing.
            failed: Event = work.caused(
                SubqueryAnswered,
                producer=PRODUCER,
                agent=work.agent,
                subquery_event_id=work.event_id,
                answer="",
                latency_ms=0.0,
                error=reason,
            )
        else:
            version = choice.card.version if choice else None
            failed = work.caused(
                TaskFailed,
                producer=PRODUCER,
                agent=work.agent,
                reason=reason,
                retryable=retryable,
                card_version=version,
                experiment_id=choice.experiment_id if choice else None,
                arm=choice.arm if choice else None,
            )
        return Outgoing(Topic.ANSWERS, str(work.correlation_id), failed)

    def _record(self, agent: str, seconds: float, prompt: int, completion: int, cost: float) -> None:
        self._metrics.answers.labels(agent).inc()
        self._metrics.answer_seconds.labels(agent).observe(seconds)
        self._metrics.tokens.labels(agent, "prompt").inc(prompt)
        self._metrics.tokens.labels(agent, "completion").inc(completion)
        self._metrics.cost.labels(agent).inc(cost)


def _audit(events: list[Event]) -> list[Outgoing]:
    """Tool calls to the audit topic; model outcomes (attachment readings) to the model memory's topic."""
    return [
        Outgoing(Topic.MODEL_OUTCOMES, e.model, e)
        if isinstance(e, ModelOutcomeRecorded)
        else Outgoing(Topic.AUDIT, e.agent, e)  # type: ignore[attr-defined]
        for e in events
    ]


def _own_part(work: Work, delegated: list[Clause]) -> tuple[str, str | None]:
    """What the agent answers itself: the clauses it keeps (with their embedding when one is left), or everything."""
    if not delegated or not isinstance(work, TaskAssigned):
        return work.text, work.embedding
    kept = [c for c in work.clauses if c not in delegated]
    if not kept:
        return work.text, work.embedding
    if len(kept) == 1:
        return kept[0].text, kept[0].embedding
    return " ".join(c.text for c in kept), work.embedding


def _attachment_source(passage: Passage) -> Source:
    """An attachment's OCR text as a source (chunk id 0: it is not in the knowledge base)."""
    return Source(chunk_id=0, source=passage.source, title=passage.title, score=1.0, snippet=passage.text[:240])


def _source(hit: Hit) -> Source:
    return Source(
        chunk_id=hit.chunk_id,
        source=hit.source,
        title=hit.title,
        score=round(hit.score, 6),
        snippet=hit.text[:240],
    )
