"""Shared fixtures: one real broker and one real PostgreSQL per test session.

Embedded (Tansu in memory, embedded PostgreSQL) by default. `SMOLIT_TEST_KAFKA_BOOTSTRAP` and
`SMOLIT_TEST_DATABASE_URL` point the same tests at an external Kafka cluster and PostgreSQL + pgvector instead (the
CI job with service containers); tests marked `real_kafka` (transactions, compaction) run only then.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg_pool import ConnectionPool

from smolit.contracts import Event, Topic, TopicNames, decode
from smolit.infra.db import migrate, open_pool
from smolit.infra.embedded import EmbeddedBroker, EmbeddedPostgres
from smolit.infra.kafka import EventProducer, KafkaProfile, ensure_topics

EXTERNAL_KAFKA = "SMOLIT_TEST_KAFKA_BOOTSTRAP"
EXTERNAL_DATABASE = "SMOLIT_TEST_DATABASE_URL"


def external_kafka() -> str | None:
    """Bootstrap servers of an external Kafka to test against, if the environment names one."""
    return os.environ.get(EXTERNAL_KAFKA) or None


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of the external Kafka (SMOLIT_TEST_KAFKA_BOOTSTRAP) or an in-memory embedded Tansu."""
    if bootstrap := external_kafka():
        yield bootstrap
        return
    with EmbeddedBroker(tmp_path_factory.mktemp("broker"), storage="memory") as b:
        yield b.start()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL with pgvector and the Smolit schema: SMOLIT_TEST_DATABASE_URL, else an embedded one."""
    if url := os.environ.get(EXTERNAL_DATABASE):
        migrate(url)
        yield url
        return
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg")) as pg:
        url = pg.start()
        migrate(url)
        yield url


@pytest.fixture(scope="session")
def pool(database_url: str) -> Iterator[ConnectionPool]:
    p = open_pool(database_url, 4)
    yield p
    p.close()


@pytest.fixture
def profile(broker: str) -> KafkaProfile:
    """Client settings for the test broker: the Tansu workarounds only on the embedded one."""
    return KafkaProfile(broker, embedded=external_kafka() is None)


@pytest.fixture
def topics(profile: KafkaProfile) -> TopicNames:
    """A fresh set of Smolit topics under a unique prefix, so tests never see each other's events."""
    names = TopicNames(f"t{uuid.uuid4().hex[:10]}")
    ensure_topics(profile.admin(), names, partitions=2)
    return names


@pytest.fixture
def producer(profile: KafkaProfile, topics: TopicNames) -> Iterator[EventProducer]:
    p = EventProducer(profile.producer(), topics)
    yield p
    p.close()


def read_topic(
    profile: KafkaProfile, topic: str, expect: int, timeout_s: float = 20.0
) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of the first `expect` records of a topic, read by partition assignment (no group join)."""
    consumer = Consumer(profile.consumer(f"reader-{uuid.uuid4().hex}") | {"enable.partition.eof": False})
    meta = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    records: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                records.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return records


def read_events(
    profile: KafkaProfile, topics: TopicNames, topic: Topic, expect: int, timeout_s: float = 20.0
) -> list[Event]:
    return [decode(v) for _, v in read_topic(profile, topics(topic), expect, timeout_s)]


@pytest.fixture(scope="session")
def embedder():
    from smolit.infra.embedder import OnnxMiniLMEmbedder

    return OnnxMiniLMEmbedder(threads=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under integration/ and e2e/ carry their marker even if a module forgets it; `real_kafka` tests skip
    on the embedded broker."""
    needs_real = pytest.mark.skip(
        reason=f"needs a real Kafka cluster (transactions/compaction; the embedded Tansu broker does not support"
        f" them): set {EXTERNAL_KAFKA}"
    )
    for item in items:
        if "real_kafka" in item.keywords and external_kafka() is None:
            item.add_marker(needs_real)
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in path.parts:
            item.add_marker(pytest.mark.e2e)
