"""`smolit run agents --instances 2` against the real broker and database: two members of one consumer group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from smolit.contracts import TaskAssigned, Topic, TopicNames, encode, pack_vector
from smolit.infra.embedded import free_port
from smolit.infra.embedded._proc import ports_available
from smolit.infra.kafka import KafkaProfile

pytestmark = pytest.mark.integration


def _samples(port: int, name: str, topic: str, group: str) -> dict[str, float]:
    """partition (or '' without one) -> value of a metric of `group` on one topic; {} while not serving."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == name and labels.get("group") == group and labels.get("topic") == topic:
                found[labels.get("partition", "")] = sample.value
    return found


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def _health(env: dict[str, str], port: int) -> subprocess.CompletedProcess[str]:
    """`smolit health agents` probing the instance whose metrics port is `port`."""
    return subprocess.run(
        [sys.executable, "-m", "smolit", "health", "agents"],
        env=env | {"SMOLIT_AGENTS_METRICS_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _two_free_ports() -> int:
    for _ in range(20):
        port = free_port()
        if ports_available([port, port + 1]):
            return port
    raise RuntimeError("no two adjacent free ports")


def test_two_agent_instances_share_the_group(
    broker: str, database_url: str, topics: TopicNames, profile: KafkaProfile, tmp_path: Path
) -> None:
    """Each instance owns one of the two task partitions and consumes the task sent there; SIGTERM stops both.

    `smolit health agents` answers 0 for a running instance and 1 once it is gone.
    """
    port = _two_free_ports()
    env = dict(os.environ) | {
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu",
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "SMOLIT_AGENTS_METRICS_PORT": str(port),
        "SMOLIT_LOG_JSON": "true",
    }
    log = tmp_path / "agents.log"
    tasks = topics(Topic.TASKS)
    group = f"{topics.prefix}-agents"  # the topic prefix names the groups too: deployments never share one
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smolit", "run", "agents", "--instances", "2"], env=env, stdout=out, stderr=out
        )
    try:
        # The lag gauge lists exactly the partitions a member owns (revoked ones are removed).
        def split() -> bool:
            owned = [set(_samples(p, "smolit_consumer_lag_messages", tasks, group)) for p in (port, port + 1)]
            return owned[0] | owned[1] == {"0", "1"} and not owned[0] & owned[1]

        assert _wait_for(split, 120), log.read_text()[-3000:]
        producer = Producer(profile.producer())
        for partition in (0, 1):
            task = TaskAssigned(
                correlation_id=uuid.uuid4(),
                agent="general",
                text="hello",
                conversation_id="c",
                embedding=pack_vector(np.zeros(384, dtype=np.float32)),
            )
            value, headers = encode(task)
            producer.produce(tasks, value, key=b"general", headers=headers, partition=partition)
        assert producer.flush(10) == 0

        def both_consumed() -> bool:
            consumed = [_samples(p, "smolit_events_consumed_total", tasks, group) for p in (port, port + 1)]
            return all(c.get("", 0) >= 1 for c in consumed)

        assert _wait_for(both_consumed, 60), log.read_text()[-3000:]
        assert _health(env, port + 1).returncode == 0  # the container probe of the second instance
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not any(_samples(p, "smolit_events_consumed_total", tasks, group) for p in (port, port + 1))
        assert _health(env, port).returncode == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
