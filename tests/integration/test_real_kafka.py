"""Guarantees that hold only on a real Kafka cluster (CI job with an apache/kafka service container).

The embedded Tansu broker lacks transactions (InitProducerId v0), read_committed isolation and compaction, which
is why Smolit does not rely on them (ARCHITECTURE.md §3). The real-cluster client profile does use idempotent
producers and read_committed consumers: these tests show those settings do what they promise there.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from smolit.infra.kafka import KafkaProfile

pytestmark = [pytest.mark.integration, pytest.mark.real_kafka]


def _topic(profile: KafkaProfile) -> str:
    name = f"real-{uuid.uuid4().hex[:10]}"
    futures = AdminClient(profile.admin()).create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    futures[name].result(timeout=30)
    return name


def _read_all(profile: KafkaProfile, topic: str, until: bytes) -> list[bytes]:
    """Values a consumer of the real-cluster profile (read_committed) sees, up to the marker value."""
    consumer = Consumer(profile.consumer(f"real-{uuid.uuid4().hex}"))
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    try:
        for _ in range(300):
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            if msg.value() == until:
                return values
            values.append(msg.value())
    finally:
        consumer.close()
    raise AssertionError(f"marker never arrived; read {values}")


def test_aborted_transactions_stay_invisible_to_the_real_profile(profile: KafkaProfile) -> None:
    """Records of an aborted transaction never reach a read_committed consumer; committed ones do."""
    assert not profile.embedded
    topic = _topic(profile)
    producer = Producer(profile.producer() | {"transactional.id": f"smolit-test-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.produce(topic, b"end")
    producer.commit_transaction(30)
    assert _read_all(profile, topic, until=b"end") == [b"committed"]


def test_real_profile_producer_is_idempotent(profile: KafkaProfile) -> None:
    """The real-cluster producer profile enables idempotence, and the broker accepts it (Tansu rejects it)."""
    config = profile.producer()
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    topic = _topic(profile)
    producer = Producer(config)
    for i in range(3):
        producer.produce(topic, str(i).encode())
    producer.produce(topic, b"end")
    assert producer.flush(30) == 0
    assert _read_all(profile, topic, until=b"end") == [b"0", b"1", b"2"]
