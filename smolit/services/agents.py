"""The agents process: tasks and subqueries in, answers out, from each agent's knowledge and LLM."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from smolit.contracts import AgentCard, Event, ModelOutcomeRecorded, Topic
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
from smolit.infra.kafka import Outgoing
from smolit.infra.settings import Settings

from ..errors import SetupError
from .wiring import Wiring, follow_topics, run_consumers

if TYPE_CHECKING:
    from smolit.agents import Loaded, ModelManager, ModelSource


def run_agents(w: Wiring, stop: threading.Event) -> None:
    from smolit.agents import (
        AgentMetrics,
        AgentRuntime,
        AttachmentReader,
        DeadlineSweeper,
        OcrPolicy,
        ParkingLot,
        PipelineMetrics,
        SubqueryPolicy,
        Trials,
        catalog_listener,
        follow_cards,
    )
    from smolit.agents.tools import ToolRunner
    from smolit.infra.knowledge import KnowledgeStore
    from smolit.infra.llm import CompletionCache, build_llms

    s = w.settings
    cards = load_cards(s.agents_dir)
    llms = build_llms(s)
    wanted = {s.llm_backend} | {c.llm.backend for c in cards.values() if c.llm.backend}
    wanted |= {c.llm.fallback_backend for c in cards.values() if c.llm.fallback_backend}
    wanted |= {s.llm_fallback_backend} if s.llm_fallback_backend else set()
    if missing := sorted(wanted - llms.keys()):
        raise SetupError(
            f"LLM backend {', '.join(missing)} is asked for but not configured"
            " (set SMOLIT_OPENAI_BASE_URL and/or SMOLIT_OPENAI_API_KEY)"
        )
    tools = ToolRunner(w.pool, timeout_s=s.tool_timeout_s)
    if unknown := tools.unknown(cards):
        raise SetupError(f"agent cards name tools that do not exist: {', '.join(unknown)} (see agents/tools.py)")
    pipeline_metrics = PipelineMetrics.create(w.registry)
    manager = build_model_manager(s, pipeline_metrics.current)
    runtime = AgentRuntime(
        cards,
        KnowledgeStore(w.pool, s.hnsw_ef_search),
        llms,
        default_backend=s.llm_backend,
        default_top_k=s.retrieval_top_k,
        metrics=AgentMetrics.create(w.registry),
        llm_attempts=s.llm_attempts,
        fallback_backend=s.llm_fallback_backend,
        cache=CompletionCache(s.llm_cache_size) if s.llm_cache_size else None,
        parking=ParkingLot(w.pool),
        policy=SubqueryPolicy(
            max_depth=s.subquery_max_depth,
            budget=s.subquery_budget,
            timeout_s=s.subquery_timeout_s,
            consult_threshold=s.consult_threshold,
        ),
        embedder=LazyEmbedder(s) if tool_calls_possible(s, cards) else None,
        tools=tools,
        trials=(trials := Trials()),
        attachments=(
            reader := AttachmentReader(
                manager,
                OcrPolicy(s.ocr_timeout_s, s.ocr_min_chars, s.ocr_min_confidence),
                pipeline_metrics,
                task_budget_s=s.attachment_task_budget_s,
                batch_budget_s=s.attachment_batch_budget_s,
            )
        ),
    )
    reader.warm(cards)  # the first request with an attachment should not wait for MLflow and the model load
    catalog = CardCatalog(cards, catalog_listener(runtime, KnowledgeStore(w.pool, s.hnsw_ef_search)))
    # Cards and trials (challengers, agent A/B tests) known before the first task: the topics replayed, then followed.
    # The same loop tells the model manager about promotions (`ModelPromoted`): it swaps without a restart; and it
    # folds every model outcome (ingest, other instances) into the memory the attachment selector reads.
    cards_handler = follow_cards(catalog.handle, trials)

    def lifecycle(events: Sequence[Event]) -> list[Outgoing]:
        manager.handle(events)
        reader.memory.apply(events)
        return list(cards_handler([e for e in events if not isinstance(e, ModelOutcomeRecorded)]))

    topics = [Topic.AGENT_LIFECYCLE, Topic.ROUTER_MODELS, Topic.MODEL_OUTCOMES]
    agents = follow_topics(w, "agents", topics, lifecycle)

    def handle(events: Sequence[Event]) -> list[Outgoing]:
        reader.new_batch()  # the batch's attachment budget keeps the loop polling within max.poll.interval.ms
        return runtime.handle(events)

    # Subanswers arrive on the answers topic; the runtime ignores the final answers there.
    loop = w.loop("agents", [Topic.TASKS, Topic.SUBQUERIES, Topic.ANSWERS], handle)
    sweeper = DeadlineSweeper(runtime.sweep, runtime.delivered, w.producer, s.subquery_sweep_s)
    run_consumers(w, "agents", [loop, agents], stop, s.agents_metrics_port, sweeper)


def build_model_manager(settings: Settings, on_change: Callable[[Loaded], None] | None = None) -> ModelManager:
    """The agents' model manager: MLflow opened at the first model asked for, OCR versions loaded on first use
    (one set of ONNX sessions shared by every OCR configuration)."""
    from smolit.agents import ModelManager, OcrLoader
    from smolit.agents.entities import NerLoader

    def source() -> ModelSource:
        from smolit.infra.shipped_models import register_shipped_models

        from .wiring import open_model_registry

        registry = open_model_registry(settings, "smolit-models")  # ModelRegistry implements the ModelSource port
        register_shipped_models(registry)  # idempotent: the shipped models are there before `smolit models list`
        return registry

    return ModelManager(source, {"ocr": OcrLoader(settings.threads), "ner": NerLoader()}, on_change)


def tool_calls_possible(settings: Settings, cards: dict[str, AgentCard]) -> bool:
    """Only generative backends call the consult_agent tool, and only agents that may consult someone."""
    return any(c.consults and (c.llm.backend or settings.llm_backend) == "openai" for c in cards.values())


class LazyEmbedder:
    """Loads the embedder on the first consult_agent call, so agents that never use the tool never pay for it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._embedder: Any = None
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Any:
        with self._lock:
            if self._embedder is None:
                from smolit.infra.embedder import build_embedder

                self._embedder = build_embedder(self._settings)
        return self._embedder.embed(texts)
