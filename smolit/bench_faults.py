"""Fault drill: crash each part of a running system under steady traffic, restart it, then count what was lost.

A process manager's view: a service is SIGKILLed (no drain, no commit) and started again at once; the embedded
broker is crashed and restarted on durable storage; the database is shut down and started again. Meanwhile an
open-loop client keeps sending requests and feedback through the gateway. At the end every accepted request must
have exactly one answer, what a client saw must not change, and each request must yield one training example.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from smolit.contracts import AnswerProduced, RoutingDecided, TaskFailed, Topic, TopicNames, TrainingExample
from smolit.infra.kafka import KafkaProfile, read_topic_events
from smolit.infra.settings import Settings

from .bench_online import env_overrides
from .stack import Stack

SERVICE_FAULTS = ("agents", "router", "streams", "learner")
FAULTS = (*SERVICE_FAULTS, "broker", "database")

# Varied requests for every demo domain; the drill checks delivery, not answer quality.
QUESTIONS = (
    "How are capital gains on shares taxed when I sell them?",
    "Can my landlord keep the deposit for normal wear and tear?",
    "What are the common side effects of ibuprofen?",
    "Is it better to pay off a mortgage early or invest the money?",
    "What does an indemnification clause in a contract mean?",
    "How much sleep does an adult need each night?",
    "What is a good way to start learning a new language?",
    "Does a privacy policy have to say which cookies a site uses?",
    "Should I open a retirement account if I am self-employed?",
    "What are early symptoms of type 2 diabetes?",
)


@dataclass
class Sent:
    """One request as the client saw it (wall-clock times, so they compare with answers' timestamps)."""

    sent_at: float
    status: int | None = None
    request_id: str | None = None
    answer: tuple[str | None, str | None] | None = None
    """(agent, answer text) of a 200 response: what the client was shown."""
    answered_at: float | None = None


@dataclass
class Traffic:
    """Open-loop client: one request every 1/rate seconds, each on its own task, plus feedback for each answer."""

    url: str
    rate: float
    records: list[Sent] = field(default_factory=list)
    feedback_sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="drill-traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def snapshot(self) -> list[Sent]:
        with self._lock:
            return list(self.records)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
            due, n = loop.time(), 0
            while not self._stop.is_set():
                task = asyncio.create_task(self._one(http, QUESTIONS[n % len(QUESTIONS)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                due += 1 / self.rate
                await asyncio.sleep(max(0.0, due - loop.time()))
            if tasks:
                await asyncio.gather(*tasks)

    async def _one(self, http: httpx.AsyncClient, text: str) -> None:
        sent = Sent(time.time())
        with self._lock:
            self.records.append(sent)
        try:
            response = await http.post(f"{self.url}/v1/requests", json={"text": text, "user": "drill"})
        except httpx.HTTPError:
            return  # no status: the client got no answer and knows it (not accepted)
        sent.status = response.status_code
        with contextlib.suppress(ValueError):
            body = response.json()
            sent.request_id = body.get("request_id")
            if response.status_code == 200:
                sent.answer = (body.get("agent"), body.get("answer"))
                sent.answered_at = time.time()
        if sent.answer is not None and sent.request_id:
            with contextlib.suppress(httpx.HTTPError):
                f = await http.post(
                    f"{self.url}/v1/feedback", json={"request_id": sent.request_id, "rating": 1, "user": "drill"}
                )
                self.feedback_sent += f.status_code == 201


@dataclass
class FaultResult:
    fault: str
    injected_at: float
    component_ready_s: float | None
    answers_flowing_s: float | None = None

    @property
    def recovery_s(self) -> float | None:
        if self.component_ready_s is None or self.answers_flowing_s is None:
            return None
        return round(max(self.component_ready_s, self.answers_flowing_s), 2)


class FaultDrill:
    """A running system (embedded broker on durable storage, embedded database) under steady traffic."""

    def __init__(self, root: Path, rate: float = 4.0, on_step: Callable[[str], None] = lambda _: None) -> None:
        self.on_step = on_step
        self.settings = Settings(data_dir=root / "data", kafka_storage="s3", port=0)
        self.stack = Stack(self.settings, on_step=on_step)
        self.rate = rate
        self.traffic: Traffic | None = None
        self.results: list[FaultResult] = []
        self.restarts: list[str] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[FaultDrill]:
        env = {
            "SMOLIT_REQUEST_TIMEOUT_S": "3",  # a request stuck behind a fault is answered later (504 + GET)
            "SMOLIT_STREAMS_FEEDBACK_TTL_S": "10",
            "SMOLIT_RATE_LIMIT_PER_S": "0",  # one client at a steady rate: measure, don't throttle
            "SMOLIT_SUBQUERY_MAX_DEPTH": "0",
            "SMOLIT_LEARNER_TRAIN_EVERY": "50",
        }
        with env_overrides(env):
            self.stack.start(timeout_s=300)
        try:
            self.traffic = Traffic(self.stack.gateway_url, self.rate)
            self.traffic.start()
            yield self
        finally:
            if self.traffic is not None:
                self.traffic.stop()
            self.stack.stop()

    def inject(self, fault: str, timeout_s: float = 90.0) -> FaultResult:
        """Inject one fault, wait until the part is back and answers flow again; how long each took."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        self.on_step(f"fault: {fault}")
        t0 = time.time()
        ready: float | None = None
        if fault in SERVICE_FAULTS:
            pid = self.stack.kill_service(fault)
            ready = self._wait(lambda: self._heartbeat_pid(fault) == pid, t0, timeout_s)
        elif fault == "broker":
            self.stack.restart_broker()
            ready = time.time() - t0
        else:
            self.stack.restart_database()
            ready = time.time() - t0
        result = FaultResult(fault, t0, None if ready is None else round(ready, 2))
        # Answers flow again once a request sent after the fault is answered (in its response, or later).
        with httpx.Client(timeout=5) as http:
            self._wait(lambda: self._answered_after(http, t0), t0, timeout_s)
        self.results.append(result)
        return result

    def _answered_after(self, http: httpx.Client, t0: float) -> bool:
        after = [s for s in self._records() if s.sent_at >= t0 and s.request_id]
        if any(s.answered_at for s in after):
            return True
        for s in after[:5]:  # the first ones sent after the fault, answered after their 504
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{self.stack.gateway_url}/v1/requests/{s.request_id}").status_code == 200:
                    return True
        return False

    def steady(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._supervise()
            time.sleep(0.2)

    def _supervise(self) -> None:
        """The drill is also the process manager: a service that exits on its own is restarted (and counted)."""
        for line in self.stack.supervise():
            self.on_step(line)
            self.restarts.append(line)

    def finish(self, drain_s: float = 120.0) -> dict[str, Any]:
        """Stop the traffic, wait for every accepted request's answer and training example; count."""
        assert self.traffic is not None
        self.on_step("draining: waiting for every accepted request's answer")
        self.traffic.stop()
        records = self.traffic.snapshot()
        accepted = [s for s in records if s.request_id and s.status in (200, 504)]
        deadline = time.monotonic() + drain_s
        final: dict[str, dict[str, Any]] = {}
        with httpx.Client(timeout=10) as http:
            pending = [s.request_id for s in accepted]
            while pending and time.monotonic() < deadline:
                still = []
                for rid in pending:
                    with contextlib.suppress(httpx.HTTPError):
                        r = http.get(f"{self.stack.gateway_url}/v1/requests/{rid}")
                        if r.status_code == 200:
                            final[str(rid)] = r.json()
                            continue
                    still.append(rid)
                pending = still
                if pending:
                    self._supervise()
                    time.sleep(1)
        examples = self._wait_for_examples(set(final), deadline + 60)
        answers = self._events(Topic.ANSWERS)
        answer_events = Counter(
            str(e.correlation_id)
            for e in {e.event_id: e for e in answers if isinstance(e, AnswerProduced | TaskFailed)}.values()
        )
        for r in self.results:
            r.answers_flowing_s = _first_answer_after(r.injected_at, accepted, final)
        # What a client was shown (a 200 answer) must be what it reads later: one answer per request.
        changed = sum(1 for s in accepted if s.answer is not None and _shown(final.get(str(s.request_id))) != s.answer)
        per_request = Counter(str(e.correlation_id) for e in {e.event_id: e for e in examples}.values())
        missing = set(final) - set(per_request)
        sent_at = {str(s.request_id): s.sent_at for s in accepted}
        start = records[0].sent_at if records else 0.0
        recoveries = [r.recovery_s for r in self.results]
        taken = {id(s) for s in accepted}
        return {
            "sent": len(records),
            "accepted": len(accepted),
            "rejected": dict(Counter(str(s.status) for s in records if id(s) not in taken)),
            "answered": len(final),
            "lost": len(accepted) - len(final),
            "duplicates_visible": changed,
            "duplicate_answer_events": sum(n - 1 for n in answer_events.values() if n > 1),
            "training_examples": len(per_request),
            "training_examples_missing": len(missing),
            # When each one was sent, in seconds after the first request, next to the faults' times below.
            "training_examples_missing_sent_s": sorted(round(sent_at[rid] - start, 1) for rid in missing)[:10],
            "training_examples_double_counted": sum(n - 1 for n in per_request.values() if n > 1),
            "training_example_redeliveries": len(examples) - len({e.event_id for e in examples}),
            "feedback_sent": self.traffic.feedback_sent,
            "faults": [
                {
                    "fault": r.fault,
                    "at_s": round(r.injected_at - start, 1),
                    "component_ready_s": r.component_ready_s,
                    "answers_flowing_s": r.answers_flowing_s,
                    "recovery_s": r.recovery_s,
                }
                for r in self.results
            ],
            "max_recovery_s": None if None in recoveries else max(recoveries, default=0.0),
            "restarted_after_exiting": self.restarts,
        }

    def _records(self) -> list[Sent]:
        return self.traffic.snapshot() if self.traffic is not None else []

    def _wait(self, done: Callable[[], bool], t0: float, timeout_s: float) -> float | None:
        while time.time() - t0 < timeout_s:
            self._supervise()
            with contextlib.suppress(psycopg.Error):
                if done():
                    return time.time() - t0
            time.sleep(0.2)
        return None

    def _heartbeat_pid(self, service: str) -> int | None:
        """The process id of the service's latest heartbeat (a killed process leaves its row behind)."""
        with psycopg.connect(self.stack.database_url, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT pid FROM service_heartbeats WHERE service = %s ORDER BY last_seen DESC LIMIT 1", (service,)
            ).fetchone()
        return None if row is None else row[0]

    def _events(self, topic: Topic) -> list[Any]:
        profile = KafkaProfile(self.stack.bootstrap, embedded=True)
        return read_topic_events(profile.consumer("drill"), TopicNames(self.settings.topic_prefix)(topic))

    def _wait_for_examples(self, answered: set[str], deadline: float) -> list[TrainingExample]:
        """Training examples, once one exists for every decided request (or at the deadline)."""
        while True:
            decided = {str(e.correlation_id) for e in self._events(Topic.DECISIONS) if isinstance(e, RoutingDecided)}
            examples = [e for e in self._events(Topic.TRAINING_EXAMPLES) if isinstance(e, TrainingExample)]
            have = {str(e.correlation_id) for e in examples}
            if (decided | answered) <= have or time.monotonic() > deadline:
                return examples
            self._supervise()
            time.sleep(2)


def _shown(view: dict[str, Any] | None) -> tuple[str | None, str | None] | None:
    return None if view is None else (view.get("agent"), view.get("answer"))


def _first_answer_after(t0: float, accepted: Sequence[Sent], final: dict[str, dict[str, Any]]) -> float | None:
    """Seconds from the fault to the first answer for a request sent after it (answers flowing again)."""
    times = []
    for s in accepted:
        if s.sent_at < t0:
            continue
        if s.answered_at is not None:
            times.append(s.answered_at)
        elif (view := final.get(str(s.request_id))) is not None:
            times.append(s.sent_at + view["latency_ms"] / 1000)
    return round(min(times) - t0, 2) if times else None


def run_faults_bench(
    faults: Sequence[str] = FAULTS,
    rate: float = 4.0,
    steady_s: float = 8.0,
    on_step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The drill of `smolit bench faults`: one JSON-able result."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smolit-bench-faults-") as tmp:
        drill = FaultDrill(Path(tmp), rate=rate, on_step=on_step)
        with drill.running():
            drill.steady(steady_s)
            for fault in faults:
                drill.inject(fault)
                drill.steady(steady_s)
            result = drill.finish()
    return {
        "benchmark": "faults",
        "rate_per_s": rate,
        "note": "services SIGKILLed and restarted at once; broker crashed (SIGKILL) and restarted on durable S3 "
        "storage; database fast-shutdown and restarted; lost = accepted (200 or 504 with a request id) without an "
        "answer after the drain",
        **result,
        "wall_s": round(time.perf_counter() - started, 1),
    }
