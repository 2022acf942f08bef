"""Read a topic once, from the beginning or from a point in time, up to its current end (no consumer group)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from smolit.contracts import DecodeError, Event, decode

log = structlog.get_logger("smolit.reader")


class TopicMissing(LookupError):
    """The topic does not exist on the broker."""


def read_topic_events(
    consumer_config: dict[str, Any], topic: str, since: datetime | None = None, timeout_s: float = 15.0
) -> list[Event]:
    """Every decodable event of `topic` from `since` (or the start) up to the end it had when called.

    Partitions are assigned directly, so nothing joins a group or commits. Undecodable records are skipped (the
    consumers that own the topic dead-letter them).
    """
    config = consumer_config | {"group.id": f"reader-{uuid.uuid4().hex}", "enable.partition.eof": False}
    consumer = Consumer(config)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise TopicMissing(f"topic {topic} does not exist")
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = max(low, 0) if since is None else _offset_at(consumer, topic, partition, since, low)
            if start < high:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, start))
        if not starts:
            return []
        consumer.assign(starts)
        events: list[Event] = []
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
            try:
                events.append(decode(msg.value()))
            except DecodeError:
                continue
        if ends:
            log.warning("topic not read to its end in time", topic=topic, partitions=sorted(ends), timeout_s=timeout_s)
        return events
    finally:
        consumer.close()


def _offset_at(consumer: Consumer, topic: str, partition: int, since: datetime, low: int) -> int:
    """First offset at or after `since`; the low watermark if the broker cannot look offsets up by time."""
    try:
        [found] = consumer.offsets_for_times([TopicPartition(topic, partition, int(since.timestamp() * 1000))], 10)
    except KafkaException:
        return max(low, 0)
    if found.offset < 0:  # no record that late
        return 1 << 62
    return found.offset
