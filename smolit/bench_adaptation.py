"""Adaptation benchmark: a new domain gets an agent, a bad agent version is flagged and recovers, end to end.

A fresh embedded system (as `smolit up`, learner discovery in `auto` mode) starts with one agent per initial domain
(cards from the train rows' domains, like `smolit bench routing`). Part of each domain's train rows becomes
knowledge: the initial domains' rows go into their agents' collections, the new domain's into the knowledge pool
(documents no agent owns; a created agent takes over the matching ones). The rest are requests, sent through the
gateway: first initial-domain rows only (warm-up), then every domain mixed, the new one included. Part-way, the bench
publishes a bad version of `--bad-agent` (`AgentUpdated`: its card retrieves from another domain's collection).

The simulated user judges each answer by what it cites: good when most of its sources are documents of the
request's domain (the bench names every document `adapt/<domain>/<n>`; the system never sees labels), bad
otherwise, including answers without sources. Feedback is corrective: the rating plus `preferred_agent`, the agent
the user knows serves the domain. For an initial domain that is the agent named after it. A user cannot name an
agent that does not exist yet, so for the new domain `preferred_agent` is left out until an agent created at run
time has given good answers to that domain's requests; from then on it is the created agent with the most such
answers (as a user who saw which assistant answered their health questions well would pick it from the model list).

Measured from the events: when the learner created agents (`AgentCreated`) and flagged them (`AgentFlagged`),
against the bench's own send and feedback timestamps. After the stream the new domain's and the bad agent's
domain's test rows are sent without feedback: routing accuracy on the new domain (routed to the new-domain
agent) and the bad agent's domain good-answer rate, before the bad version versus after the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from smolit.contracts import (
    AgentCard,
    AgentCreated,
    AgentFlagged,
    AgentProposed,
    AgentRetired,
    AgentUnflagged,
    AgentUpdated,
    Event,
    Topic,
    TopicNames,
    unpack_vector,
)
from smolit.infra.embedder import Embedder
from smolit.infra.settings import Settings

from .bench_online import _wait_for_learner, _write_cards, env_overrides
from .bench_routing import SEED, Row
from .stack import Stack

SOURCE_PREFIX = "adapt"
RESTORED_TOLERANCE = 0.05
"""The bad agent's domain counts as restored when its good-answer rate after the run is at most this far below
its rate before the bad version."""


@dataclass(frozen=True)
class Plan:
    """What goes where: knowledge documents, card examples, the request stream, the test rows."""

    knowledge: dict[str, list[str]]
    examples: dict[str, list[str]]
    stream: list[Row]
    bad_after: int
    """Requests sent before the bad version is published."""
    test_new: list[Row]
    test_bad: list[Row]
    dropped_domains: list[str]


def plan(
    train: Sequence[Row],
    test: Sequence[Row],
    initial: Sequence[str],
    new_domain: str,
    bad_agent: str | None,
    *,
    knowledge_rows: int = 150,
    shots: int = 10,
    warmup: int = 150,
    limit: int | None = None,
    bad_at: float = 0.4,
    test_limit: int | None = None,
    seed: int = SEED,
) -> Plan:
    """Split the rows; raises ValueError for domains missing from the data."""
    domains = [*initial, new_domain]
    by_domain: dict[str, list[Row]] = {d: [] for d in domains}
    for row in train:
        if row.domain in by_domain:
            by_domain[row.domain].append(row)
    if missing := [d for d in domains if not by_domain[d]]:
        raise ValueError(f"no train rows for domain(s) {missing}")
    if not any(r.domain == new_domain for r in test):
        raise ValueError(f"no test rows for the new domain {new_domain!r}")
    rng = random.Random(seed)
    knowledge: dict[str, list[str]] = {}
    examples: dict[str, list[str]] = {}
    requests: dict[str, list[Row]] = {}
    for domain in domains:
        rows = list(by_domain[domain])
        rng.shuffle(rows)
        k = min(knowledge_rows, max(1, len(rows) * 3 // 10))  # at most 30 % of a domain's rows become knowledge
        knowledge[domain] = [r.text for r in rows[:k]]
        n_shots = min(shots, len(rows) - k - 1) if domain != new_domain else 0
        examples[domain] = [r.text for r in rows[k : k + n_shots]]
        requests[domain] = rows[k + n_shots :]
    if limit is not None:  # keep the domains' proportions
        total = sum(len(v) for v in requests.values())
        for domain, rows in requests.items():
            requests[domain] = rows[: max(1, round(len(rows) * limit / total))]
    known = [r for d in initial for r in requests[d]]
    rng.shuffle(known)
    warm = known[: min(warmup, len(known) // 2)]
    mixed = known[len(warm) :] + requests[new_domain]
    rng.shuffle(mixed)
    stream = warm + mixed
    test_new = [r for r in test if r.domain == new_domain][:test_limit]
    test_bad = [r for r in test if r.domain == bad_agent][:test_limit] if bad_agent else []
    dropped = sorted({r.domain for r in train} - set(domains))
    return Plan(knowledge, examples, stream, len(warm) + round(len(mixed) * bad_at), test_new, test_bad, dropped)


def source_domain(source: str) -> str | None:
    parts = source.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == SOURCE_PREFIX else None


def judge_answer(body: dict[str, Any], domain: str) -> bool:
    """The simulated user: good when most cited passages come from the request's domain."""
    cited = [source_domain(str(s.get("source", ""))) for s in body.get("sources") or []]
    if not cited:
        return False
    return Counter(cited).most_common(1)[0][0] == domain


@dataclass
class Tally:
    """What the bench sent and saw, with timestamps (epoch seconds) to place lifecycle events in the stream."""

    initial: frozenset[str]
    new_domain: str
    bad_agent: str | None
    new_sent: list[float] = field(default_factory=list)
    """Send time of every new-domain request."""
    bad_feedback: list[float] = field(default_factory=list)
    """Time of every feedback on an answer of the bad agent, after the bad version was published."""
    bad_published_at: float | None = None
    created_good: Counter[str] = field(default_factory=Counter)
    """Good answers to new-domain requests per agent created at run time."""
    results: list[dict[str, Any]] = field(default_factory=list)
    answered: int = 0
    feedback: int = 0

    def preferred(self, domain: str) -> str | None:
        if domain in self.initial:
            return domain
        if domain == self.new_domain and self.created_good:
            return self.created_good.most_common(1)[0][0]
        return None


def run_adaptation_bench(
    embedder: Embedder,
    train: Sequence[Row],
    test: Sequence[Row],
    initial: Sequence[str],
    new_domain: str,
    bad_agent: str | None = None,
    descriptions: dict[str, str] | None = None,
    *,
    limit: int | None = None,
    test_limit: int | None = None,
    warmup: int = 150,
    knowledge_rows: int = 150,
    shots: int = 10,
    bad_at: float = 0.4,
    concurrency: int = 8,
    seed: int = SEED,
    on_step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    started = time.perf_counter()
    p = plan(
        train,
        test,
        initial,
        new_domain,
        bad_agent,
        knowledge_rows=knowledge_rows,
        shots=shots,
        warmup=warmup,
        limit=limit,
        bad_at=bad_at,
        test_limit=test_limit,
        seed=seed,
    )
    descriptions = {d: (descriptions or {}).get(d, d) for d in initial}
    # The fallback answers low-confidence requests and is exempt from flags: never the bad agent.
    fallback = next((d for d in ("general", *initial) if d in initial and d != bad_agent), initial[0])
    wrong = next((d for d in initial if d != bad_agent and d != fallback), fallback)
    tally = Tally(frozenset(initial), new_domain, bad_agent)
    with tempfile.TemporaryDirectory(prefix="smolit-adapt-") as tmp:
        root = Path(tmp)
        _write_cards(root / "agents", list(initial), descriptions, p.examples)
        env = {
            "SMOLIT_AGENTS_DIR": str(root / "agents"),
            "SMOLIT_FALLBACK_AGENT": fallback,
            "SMOLIT_DISCOVERY": "auto",  # the benchmark measures the automatic path; approve mode waits for a person
            "SMOLIT_LEARNER_TRAIN_EVERY": str(max(50, len(p.stream) // 15)),
            "SMOLIT_LEARNER_TRAIN_EVERY_S": "3",
            "SMOLIT_LEARNER_MIN_HOLDOUT": "20",
            "SMOLIT_STREAMS_FEEDBACK_TTL_S": "30",
            "SMOLIT_SUBQUERY_MAX_DEPTH": "0",
            "SMOLIT_RATE_LIMIT_PER_S": "0",  # one client at full speed: measure, don't throttle
        }
        settings = Settings(data_dir=root / "data", kafka_storage="memory", port=0)
        with env_overrides(env):
            stack = Stack(settings, on_step=on_step)
            stack.start(load_demo=lambda st: _ingest(st, embedder, p.knowledge, new_domain, on_step), timeout_s=300)
            settings = Settings(data_dir=root / "data", kafka_storage="memory", port=0)  # what the services read
        try:
            bad_card = None
            if bad_agent:
                from smolit.infra.cards import load_cards

                card = load_cards(root / "agents")[bad_agent]
                bad_card = card.model_copy(update={"collection": wrong, "version": card.version + 1})
            on_step(f"sending {len(p.stream)} requests with feedback (bad version of {bad_agent} after {p.bad_after})")
            asyncio.run(_stream(stack, settings, p, tally, bad_card, concurrency))
            registry_wait(settings, tally, on_step)
            on_step(f"sending {len(p.test_new) + len(p.test_bad)} test requests without feedback")
            finals = asyncio.run(_test_pass(stack.gateway_url, p.test_new + p.test_bad, concurrency))
            events = _lifecycle(stack, settings)
        finally:
            stack.stop()
    return _report(p, tally, finals, events, initial, new_domain, bad_agent, wrong, fallback, settings) | {
        "wall_s": round(time.perf_counter() - started, 1)
    }


def _ingest(stack: Stack, embedder: Embedder, knowledge: dict[str, list[str]], new_domain: str, on_step) -> None:
    """Ten questions per document, one chunk each: initial domains into their collections, the new one into the pool."""
    from smolit.infra.db import open_pool
    from smolit.infra.knowledge import POOL_COLLECTION, Document, KnowledgeStore

    on_step(f"ingesting {sum(map(len, knowledge.values()))} knowledge rows")
    pool = open_pool(stack.database_url, 2)
    try:
        store = KnowledgeStore(pool)
        for domain, texts in knowledge.items():
            collection = POOL_COLLECTION if domain == new_domain else domain
            vectors = embedder.embed(texts)
            for n, i in enumerate(range(0, len(texts), 10)):
                chunks = texts[i : i + 10]
                digest = hashlib.sha256("\n".join(chunks).encode()).hexdigest()
                store.upsert(
                    Document(
                        collection=collection,
                        source=f"{SOURCE_PREFIX}/{domain}/{n}",
                        content_hash=digest,
                        chunks=chunks,
                        embeddings=vectors[i : i + 10],
                        title=f"{domain} questions {n}",
                        domain=None if domain == new_domain else domain,
                    )
                )
    finally:
        pool.close()


async def _stream(
    stack: Stack, settings: Settings, p: Plan, tally: Tally, bad_card: AgentCard | None, concurrency: int
) -> None:
    queue: asyncio.Queue[tuple[int, Row]] = asyncio.Queue()
    for item in enumerate(p.stream):
        queue.put_nowait(item)
    lock = asyncio.Lock()

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            async with lock:  # the bad version is published between two requests, in stream order
                i, row = queue.get_nowait()
                if bad_card is not None and i == p.bad_after and tally.bad_published_at is None:
                    await asyncio.to_thread(_publish, stack, settings, bad_card)
                    tally.bad_published_at = time.time()
            if row.domain == tally.new_domain:
                tally.new_sent.append(time.time())
            r = await http.post(f"{stack.gateway_url}/v1/requests", json={"text": row.text})
            if r.status_code != 200 or r.json().get("status") != "answered":
                tally.results.append({"i": i, "domain": row.domain, "agent": None, "good": False})
                continue
            body = r.json()
            agent, good = body["agent"], judge_answer(body, row.domain)
            tally.answered += 1
            if row.domain == tally.new_domain and good and agent not in tally.initial:
                tally.created_good[agent] += 1
            tally.results.append(
                {"i": i, "domain": row.domain, "agent": agent, "good": good, "low": bool(body.get("low_confidence"))}
            )
            feedback: dict[str, Any] = {"request_id": body["request_id"], "rating": 1 if good else -1, "user": "bench"}
            if (preferred := tally.preferred(row.domain)) is not None:
                feedback["preferred_agent"] = preferred
            f = await http.post(f"{stack.gateway_url}/v1/feedback", json=feedback)
            if f.status_code in (200, 201):
                tally.feedback += 1
                if agent == tally.bad_agent and tally.bad_published_at is not None:
                    tally.bad_feedback.append(time.time())

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))


def _publish(stack: Stack, settings: Settings, card: AgentCard) -> None:
    """The bad version, as an operator's card change would arrive: an `AgentUpdated` that replaces the card."""
    from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing

    profile = KafkaProfile(stack.bootstrap, embedded=settings.tansu_profile)
    producer = EventProducer(profile.producer(), TopicNames(settings.topic_prefix))
    try:
        producer.send(
            Outgoing(
                Topic.AGENT_LIFECYCLE, card.name, AgentUpdated(correlation_id=uuid.uuid4(), producer="bench", card=card)
            )
        )
        producer.flush(10)
    finally:
        producer.close()


def registry_wait(settings: Settings, tally: Tally, on_step: Callable[[str], None]) -> None:
    """Let the learner train on (almost) all the feedback before the test pass routes with its champion."""
    from smolit.infra.registry import open_registry

    registry = open_registry(settings.tracking_uri, settings.data_dir)
    expected = tally.feedback - round(tally.feedback * settings.learner_holdout_share)
    _wait_for_learner(registry, settings.router_registry_name, expected * 0.9, 60, on_step)


async def _test_pass(url: str, rows: Sequence[Row], concurrency: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    queue: asyncio.Queue[Row] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            row = queue.get_nowait()
            r = await http.post(f"{url}/v1/requests", json={"text": row.text})
            body = r.json() if r.status_code == 200 else {}
            answered = body.get("status") == "answered"
            out.append(
                {"domain": row.domain, "agent": body.get("agent"), "good": answered and judge_answer(body, row.domain)}
            )

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return out


def _lifecycle(stack: Stack, settings: Settings) -> list[Event]:
    from smolit.infra.kafka import KafkaProfile, read_topic_events

    profile = KafkaProfile(stack.bootstrap, embedded=settings.tansu_profile)
    events = read_topic_events(
        profile.consumer("bench-adaptation"), TopicNames(settings.topic_prefix)(Topic.AGENT_LIFECYCLE)
    )
    return sorted(events, key=lambda e: e.occurred_at)


def _rate(values: Sequence[bool]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _report(
    p: Plan,
    tally: Tally,
    finals: list[dict[str, Any]],
    events: list[Event],
    initial: Sequence[str],
    new_domain: str,
    bad_agent: str | None,
    wrong: str,
    fallback: str,
    settings: Settings,
) -> dict[str, Any]:
    created = [e for e in events if isinstance(e, AgentCreated) and e.card.name not in initial]
    first_created = created[0].occurred_at.timestamp() if created else None
    new_agent = tally.created_good.most_common(1)[0][0] if tally.created_good else None
    new_agent_created_after = sum(t <= first_created for t in tally.new_sent) if first_created is not None else None
    flags = [e for e in events if isinstance(e, AgentFlagged)]
    bad_flags = [e for e in flags if e.agent == bad_agent]
    false_flags = sorted({e.agent for e in flags if e.agent != bad_agent})
    flag_latency = None
    if bad_flags and tally.bad_published_at is not None:
        at = bad_flags[0].occurred_at.timestamp()
        flag_latency = sum(t <= at for t in tally.bad_feedback)
    after_flag = [e for e in events if bad_flags and e.occurred_at >= bad_flags[0].occurred_at]
    promoted = any(
        isinstance(e, AgentUpdated) and e.card.name == bad_agent and e.share is None and e.producer == "learner"
        for e in after_flag
    )
    unflagged = any(isinstance(e, AgentUnflagged) and e.agent == bad_agent for e in after_flag)
    retired = any(isinstance(e, AgentRetired) and e.agent == bad_agent for e in after_flag)
    final_card = next(
        (e.card for e in reversed(events) if isinstance(e, AgentCreated | AgentUpdated) and e.card.name == bad_agent),
        None,
    )
    bad_before = [r["good"] for r in tally.results if r["domain"] == bad_agent and r["i"] < p.bad_after]
    bad_during = [
        r["good"]
        for r in tally.results
        if r["domain"] == bad_agent and r["i"] >= p.bad_after and r["agent"] == bad_agent
    ]
    bad_after = [r["good"] for r in finals if r["domain"] == bad_agent]
    before_rate, after_rate = _rate(bad_before), _rate(bad_after)
    restored = before_rate is not None and after_rate is not None and after_rate >= before_rate - RESTORED_TOLERANCE
    new_rows = [r for r in finals if r["domain"] == new_domain]
    new_accuracy = round(sum(r["agent"] == new_agent for r in new_rows) / len(new_rows), 4) if new_agent else 0.0
    return {
        "new_agent_created_after_requests": new_agent_created_after,
        "new_agent_count": len(created),
        "new_domain_accuracy": new_accuracy,
        "flag_latency_feedback": flag_latency,
        "false_flags": len(false_flags),
        "recovered": bool(bad_flags) and (promoted or unflagged or retired) and restored,
        "initial_domains": list(initial),
        "new_domain": new_domain,
        "bad_agent": bad_agent,
        "bad_version_collection": wrong if bad_agent else None,
        "fallback_agent": fallback,
        "dropped_domains": p.dropped_domains,
        "created_agents": [e.card.name for e in created],
        "proposals": _proposals(events),
        "new_domain_agent": new_agent,
        "new_domain_answer_good_rate": _rate([r["good"] for r in new_rows]),
        "new_domain_test_rows": len(new_rows),
        "falsely_flagged_agents": false_flags,
        "bad_agent_flags": [
            {"card_version": e.card_version, "proposed_actions": list(e.proposed_actions), "reason": e.reason}
            for e in bad_flags
        ],
        "bad_agent_challenger_promoted": promoted,
        "bad_agent_unflagged": unflagged,
        "bad_agent_retired": retired,
        "bad_agent_final_collection": final_card.knowledge_collection if final_card else None,
        "bad_agent_domain_good_rate_before": before_rate,
        "bad_agent_domain_good_rate_bad_version": _rate(bad_during),
        "bad_agent_domain_good_rate_after": after_rate,
        "stream_requests": len(p.stream),
        "bad_version_after_requests": p.bad_after if bad_agent else None,
        "answered": tally.answered,
        "feedback_events": tally.feedback,
        "stream_good_rate": _rate([r["good"] for r in tally.results]),
        "knowledge_rows": {d: len(v) for d, v in p.knowledge.items()},
        "new_domain_stream": {
            "requests": len(tally.new_sent),
            "low_confidence": sum(bool(r.get("low")) for r in tally.results if r["domain"] == new_domain),
            "routed_to": dict(Counter(str(r["agent"]) for r in tally.results if r["domain"] == new_domain)),
        },
        "new_domain_test_routed_to": dict(Counter(str(r["agent"]) for r in new_rows)),
        "bad_agent_domain_test_routed_to": dict(Counter(str(r["agent"]) for r in finals if r["domain"] == bad_agent)),
        "lifecycle": [_summary(e) for e in events],
        "settings": {
            "discovery": "auto",
            "route_threshold": settings.route_threshold,
            "discovery_min_size": settings.discovery_min_size,
            "discovery_feedback": settings.discovery_feedback,
            "flag_min_samples": settings.flag_min_samples,
            "flag_rate": settings.flag_rate,
            "challenger_share": settings.challenger_share,
            "threads": settings.threads,
        },
    }


def _summary(event: Event) -> dict[str, Any]:
    name = event.card.name if isinstance(event, AgentCreated | AgentUpdated) else getattr(event, "agent", None)
    item: dict[str, Any] = {"type": type(event).__name__, "agent": name, "producer": event.producer}
    if isinstance(event, AgentCreated | AgentUpdated):
        item |= {"version": event.card.version, "collection": event.card.knowledge_collection}
    if isinstance(event, AgentUpdated) and event.share is not None:
        item["share"] = event.share
    return item


def _proposals(events: list[Event]) -> list[dict[str, Any]]:
    """Each proposal's cluster, its nearest agent card, and how close its centroid is to earlier proposals' (what
    tells a second agent for one domain apart from a new topic)."""
    proposed = [e for e in events if isinstance(e, AgentProposed)]
    centroids = [np.asarray(unpack_vector(e.centroid), dtype=np.float32) for e in proposed]
    return [
        {
            "agent": e.card.name,
            "size": e.size,
            "cohesion": e.cohesion,
            "terms": list(e.terms),
            "nearest_agent": e.nearest_agent,
            "nearest_similarity": e.nearest_similarity,
            "similarity_to_earlier": {
                proposed[j].card.name: round(float(centroids[j] @ centroids[i]), 4) for j in range(i)
            },
        }
        for i, e in enumerate(proposed)
    ]
