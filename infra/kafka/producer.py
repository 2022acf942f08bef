"""Event producer: typed events in, JSON + headers on the wire, delivery confirmed by `flush`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from smolit.contracts import TOPIC_EVENTS, Event, Topic, TopicNames, encode


class ProduceError(RuntimeError):
    """Some records were not acknowledged by the broker (retryable)."""


@dataclass(frozen=True)
class Outgoing:
    """An event to publish: topic, key and the event."""

    topic: Topic
    key: str
    event: Event


DeliveryCallback = Callable[[KafkaError | None, Message], None]


class EventProducer:
    """Thin wrapper over confluent-kafka's Producer; one per process, thread-safe."""

    def __init__(self, config: dict[str, object], topics: TopicNames) -> None:
        self._producer = Producer(config)
        self._topics = topics
        self._errors: list[str] = []
        self._lock = threading.Lock()

    def send(self, out: Outgoing, on_delivery: DeliveryCallback | None = None) -> None:
        """Queue one event; `flush` (or `poll`) serves its delivery report."""
        event_type = out.event.type  # type: ignore[attr-defined]
        if event_type not in TOPIC_EVENTS[out.topic]:
            raise ValueError(f"{event_type} does not belong on topic {out.topic.value}")
        value, headers = encode(out.event)
        self.send_raw(self._topics(out.topic), out.key, value, headers, on_delivery)

    def send_raw(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                with self._lock:
                    self._errors.append(f"{msg.topic()}: {err.str()}")
            if on_delivery is not None:
                on_delivery(err, msg)

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report)
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self._producer.poll(0.05)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything queued is acknowledged; raise ProduceError otherwise."""
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
        if remaining or errors:
            detail = "; ".join(errors[:3]) or f"{remaining} records still queued after {timeout_s}s"
            raise ProduceError(f"broker did not acknowledge all records: {detail}")

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
