"""Prometheus metrics shared by every consumer loop, created against an injected registry."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class ConsumerMetrics(NamedTuple):
    consumed: Counter
    produced: Counter
    dead_letters: Counter
    duplicates: Counter
    retries: Counter
    batch_seconds: Histogram
    lag: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ConsumerMetrics:
        return cls(
            consumed=Counter("smolit_events_consumed_total", "Events consumed", ["group", "topic"], registry=registry),
            produced=Counter("smolit_events_produced_total", "Events produced", ["topic"], registry=registry),
            dead_letters=Counter(
                "smolit_dead_letters_total",
                "Messages sent to the dead-letter topic",
                ["group", "topic"],
                registry=registry,
            ),
            duplicates=Counter(
                "smolit_duplicate_events_total",
                "Events skipped as already processed",
                ["group"],
                registry=registry,
            ),
            retries=Counter("smolit_handler_retries_total", "Retried handler calls", ["group"], registry=registry),
            batch_seconds=Histogram(
                "smolit_batch_seconds",
                "Time to process one consumed batch",
                ["group"],
                registry=registry,
                buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            ),
            lag=Gauge(
                "smolit_consumer_lag_messages",
                "Records behind the high watermark per assigned partition (refreshed every few seconds)",
                ["group", "topic", "partition"],
                registry=registry,
            ),
        )


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int:
    """Expose `/metrics` for a registry on its own HTTP thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
