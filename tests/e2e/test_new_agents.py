"""An agent proposed for a new domain, approved with the CLI, served by the running system, kept across restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from smolit.contracts import AgentCard, AgentProposed, LLMConfig, Topic, TopicNames, pack_vector
from smolit.infra.db import open_pool
from smolit.infra.embedded import free_port
from smolit.infra.embedder import OnnxMiniLMEmbedder
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.knowledge import KnowledgeStore

from ..new_domains import COOKING, POOL_DOCUMENTS
from .test_up import Running, _stop
from .test_up import _start as _start_up

pytestmark = pytest.mark.e2e

NAME = "cooking"


def _start(data_dir: Path, port: int) -> Running:
    """`smolit up --no-demo`: the demo knowledge is not needed here and takes minutes to encode."""
    return _start_up(data_dir, port, 300, "--no-demo")


def _knows(data_dir: Path, service: str, agent: str) -> bool:
    log = data_dir / "logs" / f"{service}.log"
    for line in log.read_text().splitlines() if log.exists() else ():
        entry = json.loads(line) if line[:1] == "{" else {}
        if entry.get("event") == "agent catalogue changed" and agent in entry.get("agents", []):
            return True
    return False


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ) | {"SMOLIT_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "smolit", *args], env=env, capture_output=True, text=True, timeout=180)


def _models(system: Running) -> list[str]:
    return [m["id"] for m in httpx.get(f"{system.url}/v1/models", timeout=10).json()["data"]]


def _wait(condition, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def _propose(data_dir: Path) -> AgentProposed:
    """What the learner emits for a cooking cluster (the clustering itself is tested in unit and integration)."""
    embedder = OnnxMiniLMEmbedder(threads=1)
    centroid = embedder.embed(list(COOKING)).mean(axis=0)
    centroid /= (centroid @ centroid) ** 0.5
    state = json.loads((data_dir / "run" / "state.json").read_text())
    pool = open_pool(state["database_url"], 1)
    try:
        knowledge = tuple(KnowledgeStore(pool).pool_sources(centroid, 0.25, 20))  # as the learner matches the pool
    finally:
        pool.close()
    proposal = AgentProposed(
        correlation_id=uuid.uuid4(),
        proposal_id=uuid.uuid4().hex[:8],
        card=AgentCard(
            name=NAME,
            description="Questions about cooking, baking and recipes.",
            examples=COOKING[:6],
            llm=LLMConfig(system_prompt="You are Smolit's cooking agent."),
        ),
        knowledge=knowledge,
        centroid=pack_vector(centroid.tolist()),
        size=len(COOKING),
        cohesion=0.2,
    )
    producer = EventProducer(KafkaProfile(state["kafka_bootstrap"], embedded=True).producer(), TopicNames())
    try:
        producer.send(Outgoing(Topic.AGENT_LIFECYCLE, NAME, proposal))
        producer.flush()
    finally:
        producer.close()
    return proposal


def test_an_approved_agent_is_served_and_survives_a_restart(tmp_path: Path) -> None:
    """`smolit agents approve` makes a proposed agent appear in /v1/models, take its pool documents, answer
    requests routed to it, and still be there after `smolit up` is stopped and started again."""
    data_dir = tmp_path / "data"
    docs = tmp_path / "docs"
    (docs / "pool").mkdir(parents=True)
    (docs / "pool" / "bread.md").write_text(POOL_DOCUMENTS["cooking/bread.md"], encoding="utf-8")
    port = free_port()
    system = _start(data_dir, port)
    try:
        ingested = _cli(data_dir, "ingest", str(docs / "pool" / "bread.md"), "--pool", "--json")
        assert ingested.returncode == 0, ingested.stderr
        proposal = _propose(data_dir)
        assert proposal.knowledge == (str((docs / "pool" / "bread.md").resolve()),)
        assert _cli(data_dir, "agents", "approve", "nope").returncode == 2
        listed = _cli(data_dir, "agents", "proposals", "--json")
        assert [p["id"] for p in json.loads(listed.stdout)] == [proposal.proposal_id]
        approved = _cli(data_dir, "agents", "approve", proposal.proposal_id)
        assert approved.returncode == 0, approved.stderr
        assert _wait(lambda: f"smolit/{NAME}" in _models(system))
        assert _wait(lambda: _knows(data_dir, "router", NAME) and _knows(data_dir, "agents", NAME))
        body = httpx.post(
            f"{system.url}/v1/requests", json={"text": "How long should bread dough rise before baking?"}, timeout=60
        ).json()
        assert body["status"] == "answered" and body["agent"] == NAME, body
        assert body["sources"], "the agent answers from the document it took over from the pool"
    finally:
        assert _stop(system) == 0
    again = _start(data_dir, port)
    try:
        assert f"smolit/{NAME}" in _models(again)
        ask = {"text": "Why is my bread dense?", "agent": NAME}
        body = httpx.post(f"{again.url}/v1/requests", json=ask, timeout=60)
        assert body.status_code == 200 and body.json()["agent"] == NAME
    finally:
        assert _stop(again) == 0
