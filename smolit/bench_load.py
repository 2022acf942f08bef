"""Load benchmark: an open-loop request generator against the whole running system.

Requests are sent at a fixed rate whatever the answers do (open loop: a slow system builds a queue, it does not
slow the client down), each `POST /v1/requests` waiting for its answer. Per rate step: achieved throughput,
latency percentiles, errors, consumer lag of every service at the end of the step; memory of every process at
the start and at the end of the run, and once a minute in between.

Memory is the proportional set size (PSS): a shared page counts once, split among the processes that map it. The
resident set size would count PostgreSQL's shared buffers once per backend that touched them, so the database's
"growth" in RSS was mostly the same buffers seen by more processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from smolit.infra.settings import Settings

from .bench import _percentiles
from .bench_faults import QUESTIONS
from .bench_online import env_overrides
from .stack import Stack


async def _open_loop(url: str, rate: float, duration_s: float, timeout_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def one(http: httpx.AsyncClient, text: str) -> None:
        t0 = time.perf_counter()
        try:
            r = await http.post(f"{url}/v1/requests", json={"text": text, "user": "load"})
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
            return
        statuses[str(r.status_code)] += 1
        if r.status_code == 200:
            latencies.append((time.perf_counter() - t0) * 1000)

    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=timeout_s + 5, limits=limits) as http:
        start = loop.time()
        n = 0
        while (due := start + n / rate) < start + duration_s:
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(one(http, QUESTIONS[n % len(QUESTIONS)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        sent_for = loop.time() - start
        if tasks:
            await asyncio.gather(*tasks)
        wall = loop.time() - start
    return {
        "offered_rate_per_s": rate,
        "sent": n,
        "answered": len(latencies),
        # Answers over the whole step, queue drain included: what the system really delivered.
        "throughput_per_s": round(len(latencies) / wall, 2),
        "send_s": round(sent_for, 1),
        "wall_s": round(wall, 1),
        "latency_ms": _percentiles(latencies) if latencies else None,
        "statuses": dict(statuses),
    }


class LoadRun:
    """A fresh system (all services, embedded broker and database), optionally with extra agent workers."""

    def __init__(self, root: Path, storage: str, agent_workers: int, on_step: Callable[[str], None]) -> None:
        self.settings = Settings(data_dir=root / "data", kafka_storage=storage, port=0)  # type: ignore[arg-type]
        self.stack = Stack(self.settings, on_step=on_step)
        self.agent_workers = agent_workers

    def start(self, request_timeout_s: float) -> None:
        env = {"SMOLIT_RATE_LIMIT_PER_S": "0", "SMOLIT_REQUEST_TIMEOUT_S": str(request_timeout_s)}
        with env_overrides(env):
            self.stack.start(timeout_s=300)
        for _ in range(self.agent_workers - 1):
            self.stack.add_instance("agents")
        if self.agent_workers > 1:
            self._wait_for_heartbeats("agents", self.agent_workers, 120)

    def _wait_for_heartbeats(self, service: str, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = {p for p in self.stack.pids()["services"]}
            with psycopg.connect(self.stack.database_url) as conn:
                rows = conn.execute("SELECT pid FROM service_heartbeats WHERE service = %s", (service,)).fetchall()
            if len({r[0] for r in rows} & pids) >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{count} {service} workers did not all report ready in {timeout_s:.0f}s")

    def memory_mb(self) -> dict[str, float]:
        """Memory (PSS, MiB) per process role: services by name; broker and database with their children."""
        out: dict[str, float] = {}
        for name, child in self.stack.services.items():
            with contextlib.suppress(psutil.Error):
                out[name] = round(_pss(child.pid) / 2**20, 1)
        for role in ("broker", "database"):
            total = 0
            for pid in self.stack.pids()[role]:
                with contextlib.suppress(psutil.Error):
                    total += _pss(pid)
            out[role] = round(total / 2**20, 1)
        return out

    def consumer_lag(self) -> dict[str, float]:
        """Summed consumer lag per group, scraped from every service's /metrics."""
        urls = [f"{self.stack.gateway_url}/metrics"]
        with psycopg.connect(self.stack.database_url) as conn:
            rows = conn.execute("SELECT info FROM service_heartbeats").fetchall()
        urls += [f"http://127.0.0.1:{r[0]['metrics_port']}/metrics" for r in rows if r[0] and r[0].get("metrics_port")]
        lag: Counter[str] = Counter()
        with httpx.Client(timeout=5) as http:
            for url in urls:
                with contextlib.suppress(httpx.HTTPError):
                    for family in text_string_to_metric_families(http.get(url).text):
                        if family.name == "smolit_consumer_lag_messages":
                            for sample in family.samples:
                                lag[sample.labels["group"]] += sample.value
        return dict(lag)

    def stop(self) -> None:
        self.stack.stop()


def _pss(pid: int) -> int:
    """Proportional set size in bytes (Linux); the resident set size where the kernel does not report PSS."""
    process = psutil.Process(pid)
    try:
        return int(process.memory_full_info().pss)
    except (AttributeError, psutil.AccessDenied):
        return int(process.memory_info().rss)


class MemorySampler:
    """Total memory of the run once every `every_s` seconds, in a thread beside the load (a leak keeps growing
    after the caches have filled; a plateau is the caches)."""

    def __init__(self, run: LoadRun, every_s: float = 60.0) -> None:
        self._run, self._every = run, every_s
        self._stop = threading.Event()
        self._started = time.monotonic()
        self.samples: list[dict[str, float]] = []
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            memory = self._run.memory_mb()
            services = sum(v for k, v in memory.items() if k not in ("broker", "database"))
            self.samples.append(
                {
                    "t_s": round(time.monotonic() - self._started, 1),
                    "total_mb": round(sum(memory.values()), 1),
                    "services_mb": round(services, 1),
                }
            )


def run_load_bench(
    rates: Sequence[float],
    duration_s: float,
    storage: str = "memory",
    agent_workers: int = 1,
    request_timeout_s: float = 30.0,
    on_step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The run of `smolit bench load`: one step per rate on one fresh system; one JSON-able result."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smolit-bench-load-") as tmp:
        run = LoadRun(Path(tmp), storage, agent_workers, on_step)
        run.start(request_timeout_s)
        try:
            asyncio.run(_open_loop(run.stack.gateway_url, 2.0, 5.0, request_timeout_s))  # warm-up
            memory_start = run.memory_mb()
            steps = []
            with MemorySampler(run) as sampler:
                for rate in rates:
                    on_step(f"{rate:g} requests/s for {duration_s:g}s")
                    step = asyncio.run(_open_loop(run.stack.gateway_url, rate, duration_s, request_timeout_s))
                    step["consumer_lag_end"] = run.consumer_lag()
                    steps.append(step)
            memory_end = run.memory_mb()
        finally:
            run.stop()
    sustained = [
        s["offered_rate_per_s"]
        for s in steps
        if s["latency_ms"] and s["latency_ms"]["p99"] <= 1000 and s["answered"] == s["sent"]
    ]
    total_start, total_end = sum(memory_start.values()), sum(memory_end.values())
    services_start, services_end = (
        sum(v for k, v in m.items() if k not in ("broker", "database")) for m in (memory_start, memory_end)
    )
    return {
        "benchmark": "load",
        "storage": storage,
        "agent_workers": agent_workers,
        "duration_s_per_rate": duration_s,
        "note": "open loop: one POST /v1/requests per 1/rate s, each waiting for its answer; throughput = answers "
        "/ (send time + drain); all five services, extractive LLM, no demo knowledge",
        "steps": steps,
        "max_rate_with_p99_under_1s": max(sustained, default=None),
        "memory_mb_start": memory_start,
        "memory_mb_end": memory_end,
        "memory_growth_pct": round(100 * (total_end - total_start) / total_start, 1) if total_start else None,
        "services_memory_growth_pct": (
            round(100 * (services_end - services_start) / services_start, 1) if services_start else None
        ),
        "memory_samples": sampler.samples,
        "memory_measure": "PSS (proportional set size), MiB",
        "wall_s": round(time.perf_counter() - started, 1),
    }
