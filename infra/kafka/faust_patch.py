"""The one aiokafka setting faust does not expose: how long the broker may hold an empty fetch.

faust-streaming 0.15 hard-codes `fetch_max_wait_ms=1500` for its consumer. Tansu holds an empty fetch for that whole
time even when records arrive meanwhile, so every hop through a topic could add up to 1.5 s. The embedded profile
shortens it, as it does `fetch.wait.max.ms` for confluent-kafka.
"""

from __future__ import annotations

from typing import Any

_patched_ms: int | None = None


def set_fetch_max_wait(ms: int) -> None:
    """Make faust's aiokafka consumers use `fetch_max_wait_ms=ms` (process-wide; call before the worker starts)."""
    global _patched_ms
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if _patched_ms is None:
        original = AIOKafkaConsumerThread._create_worker_consumer

        def create(self: Any, transport: Any) -> Any:
            consumer = original(self, transport)
            if _patched_ms is not None:
                consumer._fetch_max_wait_ms = _patched_ms  # read when aiokafka builds its Fetcher at start()
            return consumer

        AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]
    _patched_ms = ms
