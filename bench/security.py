"""Cost of the security layer on the gateway: requests/s and latency with auth, rate limit and prompt filter on vs
off, plus the filter's own p50 per text.

Usage: python bench/security.py [--requests 300]. Prints one JSON object. Starts an embedded in-memory broker and an
embedded PostgreSQL (a few seconds). Each `POST /v1/requests` runs the whole gateway path (validation, key check,
rate limit, prompt filter, request row insert, publish to the broker) and then waits `request_timeout_s` = 1 ms for
an answer that never comes (no router runs), answering 504: that wait is the same in both configurations, so the
difference between them is the security layer. Requests go in-process through httpx's ASGI transport, one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from smolit.contracts import TopicNames
from smolit.gateway import GatewayDeps, PendingRequests, create_app
from smolit.gateway.auth import Authenticator
from smolit.gateway.guard import GuardMetrics, PromptGuard
from smolit.gateway.prompt_filter import PromptFilter
from smolit.gateway.ratelimit import RateLimiter
from smolit.infra.cards import load_cards
from smolit.infra.db import migrate, open_pool
from smolit.infra.embedded import EmbeddedBroker, EmbeddedPostgres
from smolit.infra.embedder import OnnxMiniLMEmbedder
from smolit.infra.kafka import EventProducer, KafkaProfile, ensure_topics
from smolit.infra.settings import Settings

QUESTIONS = (
    "What is the difference between a Roth IRA and a 401k?",
    "Can my landlord keep the deposit for normal wear and tear?",
    "Which vaccines do I need before travelling to Kenya?",
    "Wie hoch sind die Gebühren für eine Überweisung ins Ausland?",
)


async def _run(app: Any, headers: dict[str, str], n: int) -> list[float]:
    transport = httpx.ASGITransport(app=app)
    timings = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for i in range(n):
            body = {"text": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}
            started = time.perf_counter()
            response = await client.post("/v1/requests", json=body, headers=headers)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 504, response.text
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    embedder = OnnxMiniLMEmbedder(threads=1)
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(Path(tmp) / "broker", storage="memory") as broker,
        EmbeddedPostgres(Path(tmp) / "pg") as pg,
    ):
        profile = KafkaProfile(broker.start(), embedded=True)
        url = pg.start()
        migrate(url)
        pool = open_pool(url, 4)
        topics = TopicNames(f"bench{uuid.uuid4().hex[:6]}")
        ensure_topics(profile.admin(), topics, partitions=1)
        producer = EventProducer(profile.producer(), topics)
        cards = load_cards()

        def app(secured: bool) -> Any:
            registry = CollectorRegistry()
            deps = GatewayDeps(
                producer=producer,
                pool=pool,
                pending=PendingRequests(),
                cards=cards,
                registry=registry,
                broker_check=lambda: None,
                request_timeout_s=0.001,
                max_request_chars=4000,
            )
            if secured:
                from smolit.infra.keys import KeyStore

                deps.auth = Authenticator.for_settings(
                    mode="required",
                    host="127.0.0.1",
                    keys=KeyStore(pool),
                    limiter=RateLimiter(1e6, 10**6),
                    cards=cards,
                )
                flt = PromptFilter.for_settings(Settings(), embedder)
                deps.guard = PromptGuard(flt, producer, GuardMetrics.create(registry))
            return create_app(deps)

        from smolit.infra.keys import KeyStore

        _, token = KeyStore(pool).create("bench", ("chat",))
        results: dict[str, Any] = {"requests": args.requests, "threads": 1}
        for name, secured in (("off", False), ("on", True), ("off_again", False), ("on_again", True)):
            headers = {"Authorization": f"Bearer {token}"} if secured else {}
            timings = asyncio.run(_run(app(secured), headers, args.requests))
            producer.flush()
            timings.sort()
            results[name] = {
                "p50_ms": round(statistics.median(timings), 3),
                "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 3),
                "requests_per_s": round(len(timings) / (sum(timings) / 1000), 1),
            }
        flt = PromptFilter.for_settings(Settings(), embedder)
        filter_ms = []
        for i in range(args.requests):
            started = time.perf_counter()
            flt.check(f"{QUESTIONS[i % len(QUESTIONS)]} ({i})")
            filter_ms.append((time.perf_counter() - started) * 1000)
        results["filter_alone_p50_ms"] = round(statistics.median(filter_ms), 3)
        off = min(results["off"]["p50_ms"], results["off_again"]["p50_ms"])
        on = min(results["on"]["p50_ms"], results["on_again"]["p50_ms"])
        results["added_p50_ms"] = round(on - off, 3)
        producer.close()
        pool.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
