"""The faust app: a thin shell around `facts`, `join` and `aggregate`.

Two stages, both faust agents in every worker process of one consumer group (the app id):

1. `route` reads decisions, answers, feedback and subqueries (all keyed by request id except subqueries, and
   co-partitioned, so one worker sees every event of a request). It decodes (poison → DLQ), joins the request in
   the `joins` table (changelog-backed), emits `TrainingExample`s, and re-keys per-agent *facts* by agent onto an
   internal topic `<prefix>.streams-facts.v1`.
2. `aggregate` reads the facts (now partitioned by agent), applies them to per-(agent, pane) state in the `panes`
   table (changelog-backed) and emits `AgentMetricsWindow`s when the event-time watermark closes a window.

Table writes name their changelog partition explicitly (`_put`), because a batch (`take_events`) mixes partitions
and a timer has no current event; the partition is the one of the input that owns the key, as faust would choose.
They reach the changelog as one packed record per (table, partition) and batch (`_flush_changelog`, see
`store.py`), and the outputs of a batch are produced concurrently (`_send_all`): on the embedded broker each record
is its own producer batch and aiokafka queues one batch per partition, so records sent one after another each wait
for a broker round trip.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson
import structlog
from faust.types import TP, EventT

from smolit.contracts import (
    AnswerProduced,
    DecodeError,
    Event,
    FeedbackGiven,
    RoutingDecided,
    SubqueryRequested,
    TaskFailed,
    Topic,
    TopicNames,
    decode,
    encode,
)
from smolit.infra.kafka import dead_letter
from smolit.infra.kafka.faust_patch import set_fetch_max_wait

from .aggregate import AgentWindows, Fact, Pane, WindowSpec
from .facts import direct_facts, relabel
from .join import JoinEntry
from .metrics import StreamMetrics
from .store import MEMORY_SCHEME, PACK_KEY, PartitionedRocksStore, encode_packs
from .store import SCHEME as DURABLE_STORE
from .store import register as register_stores
from .watermark import Watermark

log = structlog.get_logger("smolit.streams")
_RAW = {"key_serializer": "raw", "value_serializer": "raw"}
_SEND_WINDOW = 64
"""Sends awaited together (see `_send_all`)."""
_ENTRY_CACHE = 20_000
"""Decoded join entries kept in memory (the events of one request arrive close together; ~2.5 KB each)."""


@dataclass(frozen=True)
class StreamsConfig:
    app_id: str
    """Consumer group and prefix of the changelog topics."""
    faust_settings: dict[str, Any]
    """From `KafkaProfile.faust()`."""
    topics: TopicNames
    partitions: int
    """Partitions of the input topics; the tables and the facts topic use the same number."""
    spec: WindowSpec = field(default_factory=WindowSpec)
    feedback_ttl_s: float = 300.0
    """How long (event time) after the decision feedback is awaited before the example is emitted without it."""
    idle_advance_s: float = 5.0
    """A partition with no new event for this long moves its watermark up to the wall clock (minus this)."""
    batch_size: int = 500
    batch_within_s: float = 0.05
    tick_s: float = 0.5
    expire_per_tick: int = 2000
    """Join entries the feedback TTL closes per timer tick at most: after a long outage or a large backlog tens of
    thousands fall due at once, and closing them in one pass stalled the worker (the watermark waits for the rest)."""
    known_agents: frozenset[str] = frozenset()
    """Agent catalogue; facts for other agents count under `unknown`. Empty: every agent is known."""
    fetch_wait_ms: int | None = None
    """From `KafkaProfile.faust_fetch_wait_ms`."""
    state_dir: Path | None = None
    """Local folder for durable tables (RocksDB): a restart then reads only the changelog written since. None:
    tables in memory, rebuilt from the whole changelog at every start."""

    @property
    def facts_topic(self) -> str:
        return f"{self.topics.prefix}.streams-facts.v1"


@dataclass
class _RouteBatch:
    """What one batch of the route stage writes: touched join entries and facts grouped by agent."""

    entries: dict[str, JoinEntry] = field(default_factory=dict)
    facts: dict[str, list[Fact]] = field(default_factory=dict)
    examples: list[Any] = field(default_factory=list)
    """TrainingExamples to emit, sent together at the end of the batch."""

    def add(self, facts: list[Fact], known: frozenset[str]) -> None:
        for fact in facts:
            fact = relabel(fact, known)
            self.facts.setdefault(fact["a"], []).append(fact)


class StreamsApp:
    """Builds the faust app; `app` is what a `faust.Worker` runs."""

    def __init__(
        self,
        config: StreamsConfig,
        metrics: StreamMetrics,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._on_ready = on_ready
        self._join_lock = asyncio.Lock()  # the timer and the agents interleave at every await
        self._pane_lock = asyncio.Lock()
        self.windows = AgentWindows(config.spec)
        t = config.topics
        if config.fetch_wait_ms is not None:
            set_fetch_max_wait(config.fetch_wait_ms)
        faust_settings = dict(config.faust_settings)
        register_stores()
        # Stores that understand packed changelog records (see `store.py`).
        faust_settings["store"] = f"{MEMORY_SCHEME}://"
        # faust keeps a data folder even for memory tables (default `<app id>-data` in the working directory): a
        # scratch folder, removed when the app is collected or the process exits.
        self._scratch = tempfile.TemporaryDirectory(prefix=f"{config.app_id}-")
        faust_settings["datadir"] = self._scratch.name
        if config.state_dir is not None:
            # The embedded broker's produce acks can run ahead of the high watermark it reports to a new consumer,
            # so a persisted offset may exceed it; the local tables already hold those writes (they precede the
            # changelog), so recovery starts at the high watermark instead of refusing to start.
            faust_settings |= {
                "store": f"{DURABLE_STORE}://",
                "datadir": str(config.state_dir),
                "recovery_consistency_check": False,
            }
        self.app = faust.App(config.app_id, topic_partitions=config.partitions, **faust_settings)
        app = self.app
        self.inputs = app.topic(t(Topic.DECISIONS), t(Topic.ANSWERS), t(Topic.FEEDBACK), t(Topic.SUBQUERIES), **_RAW)
        # internal=True: faust creates it with our partition count (Tansu would auto-create it with its default).
        self.facts = app.topic(config.facts_topic, partitions=config.partitions, internal=True, **_RAW)
        self._out = {topic: app.topic(t(topic), **_RAW) for topic in (Topic.AGENT_METRICS, Topic.TRAINING_EXAMPLES)}
        self._out[Topic.DLQ] = app.topic(t(Topic.DLQ), **_RAW)
        self.joins = app.Table("joins", partitions=config.partitions)
        self.panes = app.Table("panes", partitions=config.partitions)
        self._join_wm: dict[int, Watermark] = {}
        """Stage 1: watermark per input partition."""
        self._input_topics = tuple(t(x) for x in (Topic.DECISIONS, Topic.ANSWERS, Topic.FEEDBACK, Topic.SUBQUERIES))
        self._handled: dict[TP, int] = {}
        """Input topic-partition → the last offset stage 1 handled (this consumer generation)."""
        self._entries: dict[str, JoinEntry] = {}
        """Decoded join entries as last written (this consumer generation), oldest first: spares a RocksDB read and a
        JSON decode per event of a request already seen."""
        self._handled_generation: int | None = None
        self._pane_wm: dict[int, dict[int, float]] = {}
        """Stage 2: facts partition → input partition → the watermark that input partition last announced."""
        self._deadlines: dict[int, list[tuple[float, str]]] = {}
        """Input partition → heap of (feedback deadline, request id)."""
        self._indexed = False
        self._changes: dict[tuple[str, int], dict[str, str | None]] = {}
        """(table name, partition) → {key: value as JSON, or None} written since the last `_flush_changelog`."""
        self._cache_generation: int | None = None
        self._pane_cache: dict[str, tuple[int, Pane]] = {}
        """Decoded panes by key (the table holds their JSON); valid while the partition assignment is unchanged."""
        self._pane_keys: dict[int, set[str]] | None = None
        """Facts partition → its pane keys (None: scan the table once)."""
        self._emitted_cache: dict[str, dict[str, float]] = {}
        """(table name, partition) → {key: value or None} written since the last `_flush_changelog`."""
        app.agent(self.inputs, name="smolit-streams-route")(self._route)
        app.agent(self.facts, name="smolit-streams-aggregate")(self._aggregate)
        app.timer(config.tick_s, name="smolit-streams-tick")(self._tick)

    # ---- table access with an explicit changelog partition ----------------------------------------------------

    def _put(self, table: Any, partition: int, key: str, value: dict[str, Any] | None) -> None:
        """Write locally now; the changelog gets the key's latest value at the next `_flush_changelog`."""
        store = table.data
        store.write_partition = partition  # read by the durable store; the memory store ignores it
        encoded = None
        if value is None:
            store.pop(key, None)
        else:
            raw = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)  # ~5x json.dumps; int keys as strings too
            encoded = raw.decode()
            if isinstance(store, PartitionedRocksStore):  # one JSON encoding for the store and the changelog
                store._set(store._encode_key(key), raw)
            else:
                store[key] = value
        self._changes.setdefault((table.name, partition), {})[key] = encoded

    def _flush_changelog(self) -> None:
        """One packed changelog record (or a few, if large) per (table, partition) written since the last flush.
        No await: faust's producer buffer sends them in this order, before the input offsets are committed."""
        tables = {self.joins.name: self.joins, self.panes.name: self.panes}
        for (name, partition), changes in self._changes.items():
            for pack in encode_packs(changes):
                tables[name].send_changelog(partition, PACK_KEY, pack, key_serializer="raw", value_serializer="raw")
        self._changes.clear()

    async def _send(self, topic: Topic, key: str, event: Event) -> None:
        value, headers = encode(event)
        await self._out[topic].send(key=key.encode(), value=value, headers=headers)

    async def _send_all(self, sends: Sequence[Any]) -> None:
        """Await several sends together: each waits only for its own partition's queue slot (see the docstring).
        At most `_SEND_WINDOW` at a time: aiokafka wakes every waiter of a partition whenever its batch leaves, so
        tens of thousands of waiters (a TTL expiring a whole backlog at once) stalled the worker for minutes."""
        for i in range(0, len(sends), _SEND_WINDOW):
            await asyncio.gather(*sends[i : i + _SEND_WINDOW])

    # ---- stage 1: decode, join, re-key facts by agent -------------------------------------------------------

    async def _route(self, stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(self.config.batch_size, within=self.config.batch_within_s):
            async with self._join_lock:
                batch = _RouteBatch()
                self._check_handled()
                for ev in events:
                    msg = ev.message
                    self._handled[msg.tp] = msg.offset
                    self.metrics.consumed.labels(msg.topic).inc()
                    try:
                        await self._route_one(msg, batch)
                    except DecodeError as exc:
                        await self._dead(msg, f"undecodable: {exc}")
                    except Exception as exc:  # one bad message never stops the worker
                        self._entries.clear()  # an entry may have been changed half-way: read them from the table
                        log.warning("routing failed", topic=msg.topic, offset=msg.offset, error=repr(exc))
                        await self._dead(msg, f"handler error: {exc!r}")
                await self._flush_route(batch)
            yield None

    async def _route_one(self, msg: Any, batch: _RouteBatch) -> None:
        event = decode(msg.value)
        position = (msg.topic, msg.partition, msg.offset)
        t = event.occurred_at.timestamp()
        self._join_wm.setdefault(msg.partition, Watermark()).observe(t, msg.topic)
        if isinstance(event, RoutingDecided | AnswerProduced | TaskFailed | FeedbackGiven):
            request_id = str(event.correlation_id)
            entry = batch.entries.get(request_id) or self._entry(request_id)
            if entry is None:
                entry = JoinEntry(request_id, msg.partition, t)
            replay = str(event.event_id) in entry.seen
            if entry.is_duplicate(event, ":".join(map(str, position))):
                self.metrics.duplicates.inc()
                return
            entry.apply(event)
            batch.entries[request_id] = entry
            batch.add(direct_facts(event, position), self.config.known_agents)
            if isinstance(event, RoutingDecided | FeedbackGiven):
                batch.add(entry.feedback_facts(), self.config.known_agents)
            if entry.ready() or (replay and entry.emitted):
                batch.examples.append(entry.example())
        elif isinstance(event, SubqueryRequested):
            batch.add(direct_facts(event, position), self.config.known_agents)

    def _entry(self, request_id: str) -> JoinEntry | None:
        entry = self._entries.get(request_id)
        if entry is None:
            raw = self.joins.data.get(request_id)
            entry = JoinEntry.from_dict(raw) if raw else None
        return entry

    def _put_entry(self, entry: JoinEntry | None, request_id: str, partition: int) -> None:
        self._entries.pop(request_id, None)  # re-inserted last: the dict stays oldest first
        if entry is not None:
            self._entries[request_id] = entry
            if len(self._entries) > _ENTRY_CACHE:
                del self._entries[next(iter(self._entries))]
        self._put(self.joins, partition, request_id, None if entry is None else entry.to_dict())

    def _check_handled(self) -> None:
        """Forget handled offsets and cached entries after a rebalance: another member may have moved on."""
        generation = self.app.consumer_generation_id
        if generation != self._handled_generation:
            self._handled_generation = generation
            self._handled.clear()
            self._entries.clear()

    def _lagging(self, partition: int) -> list[str]:
        """The input topics whose records of this partition stage 1 has not all handled yet, as far as the
        consumer's last fetch knows (see `Watermark`)."""
        self._check_handled()
        consumer = self.app.consumer
        read = getattr(consumer, "_read_offset", {})  # faust-internal; from the committed offset until we handle one
        lagging = []
        for topic in self._input_topics:
            tp = TP(topic, partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not assigned (any more): hold the watermark
                highwater = None
            handled = self._handled.get(tp)
            position = handled + 1 if handled is not None else (read.get(tp) or 0)
            if highwater is None or position < highwater:  # None: not fetched yet
                lagging.append(topic)
        return lagging

    def _wm_now(self, partition: int) -> float | None:
        return self._join_wm[partition].current(self.config.idle_advance_s, self._lagging(partition))

    async def _flush_route(self, batch: _RouteBatch) -> None:
        """One changelog pack per partition, one facts message per agent and the examples, for the whole batch."""
        ttl = self.config.feedback_ttl_s
        for request_id, entry in batch.entries.items():
            self._put_entry(entry, request_id, entry.partition)
            heapq.heappush(self._deadlines.setdefault(entry.partition, []), (entry.deadline(ttl), request_id))
        self._flush_changelog()
        sends = [self._emit_example(example) for example in batch.examples]
        sends += [
            self.facts.send(key=agent.encode(), value=orjson.dumps(facts)) for agent, facts in batch.facts.items()
        ]
        await self._send_all(sends)

    async def _emit_example(self, example: Any) -> None:
        self.metrics.examples.labels("failed" if example.failed else "rated" if example.rating else "unrated").inc()
        await self._send(Topic.TRAINING_EXAMPLES, str(example.correlation_id), example)

    async def _dead(self, msg: Any, reason: str) -> None:
        self.metrics.dead_letters.labels(msg.topic).inc()
        headers = msg.headers.items() if isinstance(msg.headers, dict) else (msg.headers or [])
        out = dead_letter(
            reason,
            self.config.app_id,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            value=msg.value,
            headers=list(headers),
        )
        log.warning("dead-lettered", topic=msg.topic, offset=msg.offset, reason=reason)
        await self._send(Topic.DLQ, out.key, out.event)

    async def _expire_joins(self) -> dict[int, float]:
        """Emit what the feedback TTL closed: examples without rating, timeouts; forget the request.

        At most `expire_per_tick` entries per call; returns, per partition with due entries left, the earliest
        deadline still open: the watermark announced to stage 2 must stay there until their timeouts are out.
        """
        if not self._indexed:  # after recovery: index the recovered entries by deadline
            self._indexed = True
            for request_id, raw in self.joins.data.items():
                if raw is None:
                    continue  # deleted before a restart
                entry = JoinEntry.from_dict(raw)
                heapq.heappush(
                    self._deadlines.setdefault(entry.partition, []),
                    (entry.deadline(self.config.feedback_ttl_s), request_id),
                )
                if entry.partition in self._join_wm:  # a recovered partition starts from its newest event time
                    self._join_wm[entry.partition].observe(entry.first_seen)
        batch = _RouteBatch()
        budget = self.config.expire_per_tick
        held: dict[int, float] = {}
        for partition, heap in self._deadlines.items():
            if partition not in self._join_wm:
                continue  # not ours (any more)
            wm = self._wm_now(partition)
            while heap and wm is not None and heap[0][0] <= wm:
                if budget <= 0:
                    held[partition] = heap[0][0]
                    break
                budget -= 1
                deadline, request_id = heapq.heappop(heap)
                entry = self._entry(request_id)
                if entry is None:
                    continue
                if entry.deadline(self.config.feedback_ttl_s) != deadline:
                    continue  # a stale index entry: the decision arrived after and moved the deadline
                example, timeout = entry.expire(self.config.feedback_ttl_s)
                if timeout is not None:
                    batch.add([timeout], self.config.known_agents)
                if example is not None:
                    batch.examples.append(example)
                self._put_entry(None, request_id, entry.partition)
        await self._flush_route(batch)
        return held

    # ---- stage 2: windows per agent --------------------------------------------------------------------------

    async def _aggregate(self, stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(self.config.batch_size, within=self.config.batch_within_s):
            async with self._pane_lock:
                await self._apply(events)
            yield None

    def _check_cache(self) -> None:
        """Drop the decoded panes after a rebalance: another member may have changed the table meanwhile."""
        generation = self.app.consumer_generation_id
        if generation != self._cache_generation:
            self._cache_generation = generation
            self._pane_cache.clear()
            self._pane_keys = None
            self._emitted_cache.clear()

    def _pane(self, key: str) -> tuple[int, Pane] | None:
        if key not in self._pane_cache:
            raw = self.panes.data.get(key)
            if raw is None:
                return None
            self._pane_cache[key] = (raw["partition"], Pane.from_dict(raw["pane"]))
        return self._pane_cache[key]

    def _keys_of(self, partition: int) -> set[str]:
        if self._pane_keys is None:
            self._pane_keys = {}
            for key, raw in list(self.panes.data.items()):
                if raw is not None and key.startswith("pane|"):
                    self._pane_keys.setdefault(raw["partition"], set()).add(key)
        return self._pane_keys.setdefault(partition, set())

    def _put_pane(self, partition: int, key: str, pane: Pane | None) -> None:
        keys = self._keys_of(partition)
        if pane is None:
            self._pane_cache.pop(key, None)
            keys.discard(key)
            self._put(self.panes, partition, key, None)
        else:
            self._pane_cache[key] = (partition, pane)
            keys.add(key)
            self._put(self.panes, partition, key, {"partition": partition, "pane": pane.to_dict()})

    async def _apply(self, events: Sequence[EventT]) -> None:
        self._check_cache()
        touched: dict[str, tuple[int, Pane]] = {}
        announced: set[int] = set()
        for ev in events:
            value = orjson.loads(ev.message.value)
            p = ev.message.partition
            if isinstance(value, dict):  # a watermark announcement of one input partition
                self._pane_wm.setdefault(p, {})[value["src"]] = value["wm"]
                announced.add(p)
                continue
            for fact in value:
                self._apply_fact(fact, p, touched)
        for key, (p, pane) in touched.items():
            self._put_pane(p, key, pane)
        for p in announced:
            self._put(self.panes, p, f"wm|{p}", {"partition": p, "sources": self._pane_wm[p]})
            await self._close(p, self._watermark(p))
        self._flush_changelog()

    def _apply_fact(self, fact: Fact, p: int, touched: dict[str, tuple[int, Pane]]) -> None:
        agent, t = fact["a"], fact["t"]
        if self.windows.is_late(t, self._emitted(agent)):
            self.metrics.late.inc()
            return
        key = f"pane|{agent}|{self.config.spec.pane_of(t)}"
        if key not in touched:
            cached = self._pane(key)
            touched[key] = (p, cached[1] if cached else Pane())
        if touched[key][1].add(fact):
            self.metrics.facts.labels(agent).inc()
            self.metrics.freshness.observe(max(0.0, time.time() - t))
        else:
            self.metrics.replayed.inc()

    def _watermark(self, facts_partition: int) -> float | None:
        """Stage 2 watermark: the lowest of all input partitions' watermarks (none until every one has spoken)."""
        sources = self._pane_wm.get(facts_partition, {})
        if len(sources) < self.config.partitions:
            return None
        return min(sources.values())

    def _emitted(self, agent: str) -> dict[str, float]:
        """The end of the last emitted window per kind (a copy)."""
        if agent not in self._emitted_cache:
            raw = self.panes.data.get(f"emitted|{agent}")
            self._emitted_cache[agent] = dict(raw["emitted"]) if raw else {}
        return dict(self._emitted_cache[agent])

    async def _close(self, partition: int, watermark: float | None) -> None:
        """Emit the windows the watermark closed for the agents of this partition; drop panes no longer needed."""
        if watermark is None:
            return
        self._check_cache()
        panes: dict[str, dict[int, Pane]] = {}
        for key in list(self._keys_of(partition)):
            found = self._pane(key)
            if found is not None:
                _, agent, start = key.split("|")
                panes.setdefault(agent, {})[int(start)] = found[1]
        for agent, agent_panes in panes.items():
            emitted = self._emitted(agent)
            before = dict(emitted)
            sends = []
            for window in self.windows.close(agent, agent_panes, emitted, watermark):
                self._record_window(window)
                sends.append(self._send(Topic.AGENT_METRICS, agent, window))
            await self._send_all(sends)
            if emitted != before:
                self._emitted_cache[agent] = dict(emitted)
                self._put(self.panes, partition, f"emitted|{agent}", {"partition": partition, "emitted": emitted})
            for start in agent_panes:
                if self.windows.removable(start, emitted):
                    self._put_pane(partition, f"pane|{agent}|{start}", None)

    def _record_window(self, w: Any) -> None:
        m, labels = self.metrics, (w.agent, w.window_kind)
        m.windows.labels(w.window_kind).inc()
        m.window_requests.labels(*labels).set(w.requests)
        m.window_failures.labels(*labels).set(w.failures)
        if w.latency_p95_ms is not None:
            m.window_latency_p95.labels(*labels).set(w.latency_p95_ms / 1000)
        if w.mean_rating is not None:
            m.window_mean_rating.labels(*labels).set(w.mean_rating)
            m.window_negative_rate.labels(*labels).set(w.negative_rate or 0.0)

    # ---- timer: idle watermarks, TTLs -------------------------------------------------------------------------

    def _drop_deleted(self) -> None:
        """Forget keys deleted before a restart: a deletion is a JSON `null` in the changelog, which recovery
        restores as a key whose value is None (found by the fault drill: the next tick crashed on it)."""
        for table in (self.joins, self.panes):
            for key in [k for k, v in table.data.items() if v is None]:
                table.data.pop(key, None)

    async def _tick(self) -> None:
        if not self.app.tables.recovery.completed.is_set():
            return  # tables are still being rebuilt from their changelogs
        if self._on_ready is not None:
            self._drop_deleted()
            self._on_ready()
            self._on_ready = None
        if not self._pane_wm:  # stage 2 watermarks recovered from the changelog
            for key, raw in list(self.panes.data.items()):
                if raw is not None and key.startswith("wm|"):
                    self._pane_wm[raw["partition"]] = {int(k): v for k, v in raw["sources"].items()}
        # Only partitions this worker owns now: after a rebalance another member speaks for the others.
        assignment = self.app.consumer.assignment()
        inputs = {tp.partition for tp in assignment if tp.topic == self.config.topics(Topic.DECISIONS)}
        facts = {tp.partition for tp in assignment if tp.topic == self.config.facts_topic}
        for p in list(self._join_wm):
            if p not in inputs:
                del self._join_wm[p]
        for p in inputs:
            self._join_wm.setdefault(p, Watermark())
        async with self._join_lock:
            held = await self._expire_joins()
            # Announce each input partition's watermark to every facts partition, after the timeouts it caused
            # (same producer, same partition: the facts arrive first), so stage 2 closes a window only when every
            # input partition has passed it.
            for p in self._join_wm:
                current = self._wm_now(p)
                if current is None:
                    continue
                if p in held:  # timeouts still to come at or after this time
                    current = min(current, held[p])
                marker = json.dumps({"wm": current, "src": p}).encode()
                await self._send_all(
                    [self.facts.send(key=None, value=marker, partition=fp) for fp in range(self.config.partitions)]
                )
        async with self._pane_lock:
            for p in facts:
                await self._close(p, self._watermark(p))
            self._flush_changelog()
