"""The embedded launchers against real processes: Tansu (memory and SeaweedFS-backed S3) and PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from smolit.infra.embedded import EmbeddedBroker, EmbeddedPostgres, EmbeddedStartError

pytestmark = pytest.mark.integration


def _listening_ports(pids: list[int]) -> set[int]:
    ports: set[int] = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                ports.add(conn.laddr.port)
    return ports


def _nothing_listens(ports: set[int]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)


def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 1, "linger.ms": 0})
    producer.produce(topic, key=b"k", value=value)
    assert producer.flush(10) == 0


def _consume_one(bootstrap: str, topic: str, timeout_s: float = 60.0) -> bytes | None:
    """First record of a topic, read by partition assignment (no group join, so a loaded machine only slows it)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg.value()
        return None
    finally:
        consumer.close()


def test_memory_broker_round_trip(tmp_path: Path) -> None:
    """A memory-backed broker delivers a produced record to a consumer group and stops without leftovers."""
    broker = EmbeddedBroker(tmp_path, storage="memory")
    bootstrap = broker.start()
    try:
        assert broker.start() == bootstrap == broker.bootstrap  # start is idempotent while running
        ports = _listening_ports(broker.pids())
        _create_topic(bootstrap, "round-trip")
        _produce(bootstrap, "round-trip", b"hello")
        assert _consume_one(bootstrap, "round-trip") == b"hello"
    finally:
        broker.stop()
    broker.stop()
    assert broker.pids() == []
    assert _nothing_listens(ports)
    assert (tmp_path / "logs" / "tansu.log").exists()


def test_s3_broker_keeps_records_across_restart(tmp_path: Path) -> None:
    """An s3-backed broker still has its topic and record after a stop and a start on the same data dir."""
    with EmbeddedBroker(tmp_path, storage="s3") as broker:
        assert len(broker.pids()) == 2  # tansu and seaweedfs
        ports = _listening_ports(broker.pids())
        _create_topic(broker.bootstrap, "durable")
        _produce(broker.bootstrap, "durable", b"kept")
    assert _nothing_listens(ports)

    with EmbeddedBroker(tmp_path, storage="s3") as broker:
        topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
        assert "durable" in topics
        assert _consume_one(broker.bootstrap, "durable") == b"kept"


def test_broker_start_failure_names_the_log(tmp_path: Path) -> None:
    """A broker that cannot bind its port raises EmbeddedStartError naming the log, and leaves nothing running."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(tmp_path, storage="memory", port=port)
        with pytest.raises(EmbeddedStartError, match=r"tansu\.log"):
            broker.start(timeout_s=10)
    assert broker.pids() == []


def test_broker_dies_with_its_parent(tmp_path: Path) -> None:
    """Killing the Python process that started the broker also ends the broker."""
    script = (
        "import sys, time, pathlib\n"
        "from smolit.infra.embedded import EmbeddedBroker\n"
        "b = EmbeddedBroker(pathlib.Path(sys.argv[1]), storage='memory')\n"
        "b.start()\n"
        "print(*b.pids(), flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert pids
        parent.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids], timeout=10)
    assert alive == []


def test_postgres_keeps_vectors_across_restart(tmp_path: Path) -> None:
    """PostgreSQL runs pgvector queries and still has the rows after a stop and a start on the same data dir."""
    pg = EmbeddedPostgres(tmp_path)
    url = pg.start()
    assert url.startswith("postgresql://smolit@127.0.0.1:") and url.endswith("/smolit")
    ports = _listening_ports(pg.pids()[:1])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create extension if not exists vector")
        conn.execute("create table items (id int primary key, embedding vector(3))")
        conn.execute("insert into items values (1, '[1,2,3]'), (2, '[9,9,9]')")
        nearest = conn.execute("select id from items order by embedding <-> '[1,2,4]' limit 1").fetchone()
        assert nearest == (1,)
    pg.stop()
    pg.stop()
    assert pg.pids() == []
    assert _nothing_listens(ports)

    with EmbeddedPostgres(tmp_path) as again, psycopg.connect(again.url) as conn:
        rows = conn.execute("select id, embedding::text from items order by id").fetchall()
        assert rows == [(1, "[1,2,3]"), (2, "[9,9,9]")]


def test_postgres_starts_over_a_stale_lock(tmp_path: Path) -> None:
    """A server killed with SIGKILL, whose postmaster.pid names an unrelated live process, does not block a start."""
    pg = EmbeddedPostgres(tmp_path)
    with psycopg.connect(pg.start(), autocommit=True) as conn:
        conn.execute("create table marks (n int)")
        conn.execute("insert into marks values (7)")
    os.kill(pg.pids()[0], signal.SIGKILL)
    lock = tmp_path / "postgres" / "data" / "postmaster.pid"
    lines = lock.read_text().split("\n")
    lock.write_text("\n".join([str(os.getpid()), *lines[1:]]))  # as if the pid had been reused

    with EmbeddedPostgres(tmp_path) as again, psycopg.connect(again.url) as conn:
        assert conn.execute("select n from marks").fetchall() == [(7,)]
    pg.stop()
