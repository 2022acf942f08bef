"""Cost of the observability hot path: the canonical log line per event and one consumer-lag refresh.

Usage: python bench/observability.py [--events 20000] [--refreshes 500]. Prints one JSON object. Starts an embedded
in-memory broker for the lag refresh (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from smolit.contracts import AnswerProduced, Topic, TopicNames
from smolit.infra.embedded import EmbeddedBroker
from smolit.infra.kafka import ConsumerLoop, EventProducer, KafkaProfile, LoopConfig, Outgoing, ensure_topics
from smolit.infra.logging import configure_logging, event_fields
from smolit.infra.metrics import ConsumerMetrics


def log_line_us(events: int) -> float:
    """Microseconds per canonical `event handled` JSON line (rendered, written to /dev/null)."""
    import structlog

    real_stderr = sys.stderr
    with open(os.devnull, "w") as null:
        sys.stderr = null  # configure_logging binds the stream it finds
        try:
            configure_logging("INFO", json=True)
            log = structlog.get_logger("bench")
            event = AnswerProduced(correlation_id=uuid.uuid4(), agent="finance", answer="a", backend="x", latency_ms=1)
            started = time.perf_counter()
            for _ in range(events):
                log.info("event handled", **event_fields(event), outcome="ok", group="g", batch=64, duration_ms=1.25)
            return (time.perf_counter() - started) / events * 1e6
        finally:
            sys.stderr = real_stderr


def lag_refresh_us(refreshes: int, partitions: int = 4) -> float:
    """Microseconds per lag refresh of a consumer holding `partitions` partitions (cached watermarks)."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp), storage="memory") as broker:
        profile = KafkaProfile(broker.start(), embedded=True)
        topics = TopicNames(f"bench{uuid.uuid4().hex[:6]}")
        ensure_topics(profile.admin(), topics, partitions=partitions)
        producer = EventProducer(profile.producer(), topics)
        for i in range(200):
            event = AnswerProduced(correlation_id=uuid.uuid4(), agent="a", answer="x", backend="x", latency_ms=1)
            producer.send(Outgoing(Topic.ANSWERS, str(i), event))
        producer.flush()
        name = topics(Topic.ANSWERS)
        consumer = Consumer(profile.consumer("bench"))
        consumer.assign([TopicPartition(name, p, 0) for p in range(partitions)])
        received, deadline = 0, time.monotonic() + 20
        while received < 200 and time.monotonic() < deadline:  # every partition fetched: positions are known
            received += len(consumer.consume(200, 0.5))
        loop = ConsumerLoop(
            profile.consumer("bench"),
            LoopConfig(group="bench", topics=[name]),
            lambda events: [],
            producer,
            None,
            ConsumerMetrics.create(CollectorRegistry()),
        )
        started = time.perf_counter()
        for _ in range(refreshes):
            loop._update_lag(consumer)  # the loop's own refresh, called directly to time it alone
        elapsed = (time.perf_counter() - started) / refreshes * 1e6
        consumer.close()
        producer.close()
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--refreshes", type=int, default=500)
    args = parser.parse_args()
    result = {
        "log_line_us": round(log_line_us(args.events), 2),
        "lag_refresh_us_4_partitions": round(lag_refresh_us(args.refreshes), 2),
        "events": args.events,
        "refreshes": args.refreshes,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
