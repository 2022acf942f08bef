"""The online protocol of `smolit bench routing`: learning from feedback through the running system.

A fresh embedded system (in-memory broker, database, every service as `smolit up` runs them) gets one agent per
domain. Each train row is sent as a real request through the gateway; when its answer arrives the bench sends the
feedback a user would: `bandit` (thumbs up when the routed agent is the row's domain, else down) or `corrective`
(the same plus `preferred_agent`). The stream worker joins decisions, answers and feedback into training examples,
the learner trains and registers candidates; each registered version is then scored on the test rows in process
(same embeddings), giving the learning curve.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import structlog
import yaml

from smolit.infra.registry import open_registry
from smolit.infra.settings import Settings
from smolit.router.features import AgentFeatures
from smolit.router.network import NetworkScorer

from .stack import Stack

log = structlog.get_logger(__name__)


class Row(Protocol):
    text: str
    domain: str


@contextmanager
def env_overrides(values: dict[str, str]) -> Iterator[None]:
    """Settings for the service processes, which read them from the environment `Stack` passes on."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _write_cards(folder: Path, domains: Sequence[str], descriptions: dict[str, str], examples: dict[str, list[str]]):
    folder.mkdir(parents=True, exist_ok=True)
    for domain in domains:
        card = {"name": domain, "description": descriptions[domain], "examples": examples[domain]}
        (folder / f"{domain}.yaml").write_text(yaml.safe_dump(card, sort_keys=False))


def run_online(
    mode: str,
    domains: Sequence[str],
    descriptions: dict[str, str],
    examples: dict[str, list[str]],
    train: Sequence[Row],
    test_x: np.ndarray,
    test_y: np.ndarray,
    checkpoints: int,
    features_for: Callable[[Path], AgentFeatures],
    route_one: Callable[[NetworkScorer], list[float]],
    concurrency: int = 16,
    on_step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """One fresh system, all train rows with `mode` feedback; the curve of registered versions on the test rows."""
    every = max(50, len(train) // checkpoints)
    with tempfile.TemporaryDirectory(prefix=f"smolit-online-{mode}-") as tmp:
        root = Path(tmp)
        _write_cards(root / "agents", domains, descriptions, examples)
        fallback = "general" if "general" in domains else domains[0]
        env = {
            "SMOLIT_AGENTS_DIR": str(root / "agents"),
            "SMOLIT_FALLBACK_AGENT": fallback,
            # Measure routing itself, not the fallback rule: neither similarity's threshold nor the network's fitted
            # one (target precision 0.8, at least 0.4) sends a request to the fallback agent, a real domain here. With
            # it, ratings in bandit mode mostly judged the fallback agent on the harder medmcqa set and taught the
            # network little (bandit 0.652 with it, 0.690 without; README).
            "SMOLIT_ROUTE_THRESHOLD": "-1",
            "SMOLIT_LEARNER_MIN_CONFIDENCE": "0",
            "SMOLIT_LEARNER_TARGET_PRECISION": "0.01",
            "SMOLIT_LEARNER_TRAIN_EVERY": str(every),
            "SMOLIT_LEARNER_TRAIN_EVERY_S": "3",
            "SMOLIT_LEARNER_MIN_HOLDOUT": "20",
            "SMOLIT_STREAMS_FEEDBACK_TTL_S": "30",
            "SMOLIT_SUBQUERY_MAX_DEPTH": "0",
            "SMOLIT_RATE_LIMIT_PER_S": "0",  # one client sends every row as fast as it can: measure, don't throttle
        }
        settings = Settings(data_dir=root / "data", kafka_storage="memory", port=0)
        with env_overrides(env):
            stack = Stack(settings, on_step=on_step)
            stack.start(timeout_s=300)
        try:
            on_step(f"{mode}: sending {len(train)} requests with feedback")
            started = time.perf_counter()
            sent = asyncio.run(_send(stack.gateway_url, train, domains, mode, concurrency))
            latencies = sent.pop("route_latency_ms")
            on_step(f"{mode}: sent in {time.perf_counter() - started:.0f} s; waiting for the learner to catch up")
            registry = open_registry(settings.tracking_uri, settings.data_dir)
            _wait_for_learner(registry, settings.router_registry_name, sent["feedback"] * 0.9, 120, on_step)
            wall = time.perf_counter() - started
            features = features_for(root / "agents")
            curve = [[0, round(float(np.mean(features.priors(test_x).argmax(axis=1) == test_y)), 4)]]
            versions = registry.versions(settings.router_registry_name)
            champion_accuracy = None
            for version in versions:
                scorer = NetworkScorer(registry.load(settings.router_registry_name, version.version), features, "")
                seen = version.metrics.get("examples_seen", 0) + version.metrics.get("holdout_size", 0)
                accuracy = round(float(np.mean(scorer.score(test_x).argmax(axis=1) == test_y)), 4)
                curve.append([int(seen), accuracy])
                if "champion" in version.aliases:
                    champion_accuracy = accuracy
            learned = int(versions[-1].metrics.get("examples_seen", 0)) if versions else 0
        finally:
            stack.stop()
    # Routing one request at a time with the final model: embedding plus network scoring, in process, once the
    # system's processes are gone (they would only add their idle polling to the timing).
    route_ms = route_one(scorer) if versions else []
    return {
        "curve": curve,
        # What routes traffic at the end: the champion (the gate's pick on the holdout), else the last candidate.
        "final_accuracy": champion_accuracy if champion_accuracy is not None else curve[-1][1],
        "last_candidate_accuracy": curve[-1][1],
        "versions": len(curve) - 1,
        "answered": sent["answered"],
        "transport_errors": sent["transport_errors"],
        "feedback_events": sent["feedback"],
        "pipeline_routing_batch_ms": latencies,
        "route_ms": route_ms,
        "learn_events_per_s": round(learned / wall, 1) if wall else None,
        "wall_s": round(wall, 1),
    }


async def _send(url: str, rows: Sequence[Row], domains: Sequence[str], mode: str, concurrency: int) -> dict[str, Any]:
    queue: asyncio.Queue[Row] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    counts = {"answered": 0, "feedback": 0, "transport_errors": 0}
    route_ms: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            row = queue.get_nowait()
            try:
                await one(http, row)
            except httpx.TransportError as exc:  # e.g. a kept-alive connection the server closed meanwhile
                counts["transport_errors"] += 1
                log.warning("bench request failed", error=repr(exc))

    async def one(http: httpx.AsyncClient, row: Row) -> None:
        r = await http.post(f"{url}/v1/requests", json={"text": row.text})
        if r.status_code != 200 or r.json().get("status") != "answered":
            return
        body = r.json()
        counts["answered"] += 1
        if isinstance(body.get("routing_ms"), int | float):
            route_ms.append(float(body["routing_ms"]))
        feedback: dict[str, Any] = {
            "request_id": body["request_id"],
            "rating": 1 if body["agent"] == row.domain else -1,
            "user": "bench",
        }
        if mode == "corrective":
            feedback["preferred_agent"] = row.domain
        f = await http.post(f"{url}/v1/feedback", json=feedback)
        counts["feedback"] += f.status_code in (200, 201)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    arr = np.asarray(route_ms or [np.nan])
    return counts | {
        "route_latency_ms": {
            "p50": round(float(np.nanpercentile(arr, 50)), 2),
            "p99": round(float(np.nanpercentile(arr, 99)), 2),
        }
    }


def _wait_for_learner(registry: Any, name: str, examples: float, timeout_s: float, on_step: Callable) -> None:
    """Until a registered version has trained on (almost) every example sent, or the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        versions = registry.versions(name)
        # Trained on or held out: holdout examples join training after a few evaluations (learner_holdout_rounds).
        last = versions[-1].metrics if versions else {}
        if versions and last.get("examples_seen", 0) + last.get("holdout_size", 0) >= examples:
            return
        time.sleep(2)
    on_step(f"learner did not reach {examples:.0f} examples within {timeout_s:.0f} s; measuring what it registered")
