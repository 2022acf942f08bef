"""A running pipeline for chat tests: router and agents consumer loops, the gateway's answer projection and the
gateway app served by uvicorn, on the real embedded broker and database (as `smolit run router|agents|gateway`)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from smolit.agents import AgentMetrics, AgentRuntime, AttachmentReader, Ingestor, RawDocument
from smolit.contracts import AgentCard, Topic, TopicNames
from smolit.gateway import AnswerProjection, GatewayDeps, PendingRequests, create_app
from smolit.infra.cards import load_cards
from smolit.infra.embedded import free_port
from smolit.infra.kafka import ConsumerLoop, EventProducer, KafkaProfile, LoopConfig, PostgresDeduper, ensure_topics
from smolit.infra.knowledge import KnowledgeStore
from smolit.infra.llm import ExtractiveLLM
from smolit.infra.metrics import ConsumerMetrics
from smolit.router import Router, RouterMetrics

DOCS = {
    "finance": (
        "fiqa#cheque",
        "Business cheques",
        "Have the cheque reissued to the proper payee. A bank will not deposit a cheque made out to another person "
        "into your business account unless it is endorsed over to the business.",
    ),
    "legal": (
        "cfpb#terms",
        "Changing card terms",
        "A card issuer may change the terms of your card agreement, but it must tell you in writing at least 45 "
        "days before the change takes effect. You may reject the change and close the account.",
    ),
    "health": (
        "medqa#metformin",
        "Metformin",
        "Common side effects of metformin are nausea, diarrhoea and stomach pain. Take it with meals to reduce them.",
    ),
}


@dataclass
class ChatStack:
    url: str
    profile: KafkaProfile
    topics: TopicNames
    pool: ConnectionPool
    producer: EventProducer


def demo_cards(pool: ConnectionPool, embedder) -> dict[str, AgentCard]:
    """The demo cards reading from fresh collections with one document each (general's stays empty)."""
    suffix = uuid.uuid4().hex[:8]
    cards = {n: c.model_copy(update={"collection": f"{n}_{suffix}"}) for n, c in load_cards().items()}
    ingest = Ingestor(KnowledgeStore(pool), embedder)
    for name, (source, title, text) in DOCS.items():
        ingest.ingest(cards[name].knowledge_collection, RawDocument(source, text, title))
    return cards


@contextmanager
def running_stack(
    broker: str,
    pool: ConnectionPool,
    embedder,
    request_timeout_s: float = 20.0,
    attachments: AttachmentReader | None = None,
    reads_attachments: str | None = None,
) -> Iterator[ChatStack]:
    """`attachments` reads request attachments for the agent `reads_attachments` (its card gets
    `pipeline.request: [ocr]`)."""
    profile = KafkaProfile(broker, embedded=True)
    topics = TopicNames(f"t{uuid.uuid4().hex[:10]}")
    ensure_topics(profile.admin(), topics, partitions=2)
    producer = EventProducer(profile.producer(), topics)
    cards = demo_cards(pool, embedder)
    if reads_attachments is not None:
        card = cards[reads_attachments]
        pipeline = card.pipeline.model_copy(update={"request": ("ocr",)})
        cards[reads_attachments] = card.model_copy(update={"pipeline": pipeline})
    router = Router(
        cards, embedder, fallback="general", threshold=0.25, metrics=RouterMetrics.create(CollectorRegistry())
    )
    runtime = AgentRuntime(
        cards,
        KnowledgeStore(pool),
        {"extractive": ExtractiveLLM()},
        default_backend="extractive",
        default_top_k=3,
        metrics=AgentMetrics.create(CollectorRegistry()),
        attachments=attachments,
    )
    pending = PendingRequests()
    metrics = ConsumerMetrics.create(CollectorRegistry())
    tag = uuid.uuid4().hex[:6]

    def loop(group: str, wanted: list[Topic], handler, dedupe: bool = True) -> ConsumerLoop:
        config = LoopConfig(group=f"{group}-{tag}", topics=[topics(t) for t in wanted], batch_size=16)
        deduper = PostgresDeduper(pool) if dedupe else None
        return ConsumerLoop(profile.consumer(config.group), config, handler, producer, deduper, metrics)

    loops = [
        loop("router", [Topic.REQUESTS], router.handle),
        loop("agents", [Topic.TASKS], runtime.handle),
        loop("gateway", [Topic.DECISIONS, Topic.ANSWERS], AnswerProjection(pool, pending).handle, dedupe=False),
    ]
    app = create_app(
        GatewayDeps(
            producer=producer,
            pool=pool,
            pending=pending,
            cards=cards,
            registry=CollectorRegistry(),
            broker_check=lambda: None,
            request_timeout_s=request_timeout_s,
            max_request_chars=4000,
        )
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            producer.poll(0.05)

    threads = [lp.start_thread() for lp in loops]
    threads += [threading.Thread(target=poll, daemon=True), threading.Thread(target=server.run, daemon=True)]
    for thread in threads[-2:]:
        thread.start()
    try:
        for lp in loops:
            assert lp.assigned.wait(30), "consumer group join timed out"
        while not server.started:
            time.sleep(0.02)
        yield ChatStack(f"http://127.0.0.1:{port}", profile, topics, pool, producer)
    finally:
        server.should_exit = True
        for lp in loops:
            lp.stop()
        stop.set()
        for thread in threads:
            thread.join(15)
        producer.close()
