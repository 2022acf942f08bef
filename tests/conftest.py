"""Shared fixtures: one real embedded broker and one real embedded PostgreSQL per test session."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of an embedded Tansu broker with in-memory storage."""
    with EmbeddedBroker(tmp_path_factory.mktemp("broker"), storage="memory") as b:
        yield b.start()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an embedded PostgreSQL with pgvector and the Smolit schema."""
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
    return KafkaProfile(broker, embedded=True)


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
    """Tests under integration/ and e2e/ carry their marker even if a module forgets it."""
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in path.parts:
            item.add_marker(pytest.mark.e2e)
