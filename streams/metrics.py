"""Prometheus metrics of the stream worker, created against an injected registry."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class StreamMetrics(NamedTuple):
    consumed: Counter
    facts: Counter
    replayed: Counter
    duplicates: Counter
    late: Counter
    dead_letters: Counter
    windows: Counter
    examples: Counter
    freshness: Histogram
    window_requests: Gauge
    window_failures: Gauge
    window_latency_p95: Gauge
    window_mean_rating: Gauge
    window_negative_rate: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StreamMetrics:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["agent", "kind"], registry=registry)

        return cls(
            consumed=Counter("smolit_streams_events_total", "Input events read", ["topic"], registry=registry),
            facts=Counter("smolit_streams_facts_total", "Facts applied to windows", ["agent"], registry=registry),
            replayed=Counter(
                "smolit_streams_replayed_facts_total", "Facts skipped as already applied (replay)", registry=registry
            ),
            duplicates=Counter(
                "smolit_streams_duplicate_events_total", "Events ignored as upstream duplicates", registry=registry
            ),
            late=Counter(
                "smolit_streams_late_facts_total",
                "Facts dropped because their window had closed (beyond the lateness bound)",
                registry=registry,
            ),
            dead_letters=Counter(
                "smolit_streams_dead_letters_total", "Input messages sent to the DLQ", ["topic"], registry=registry
            ),
            windows=Counter("smolit_streams_windows_total", "Metric windows emitted", ["kind"], registry=registry),
            examples=Counter(
                "smolit_streams_training_examples_total", "Training examples emitted", ["outcome"], registry=registry
            ),
            freshness=Histogram(
                "smolit_streams_freshness_seconds",
                "Event time to the fact being applied to its window (visible in the tables)",
                registry=registry,
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30),
            ),
            window_requests=gauge("smolit_agent_window_requests", "Requests in the last closed window"),
            window_failures=gauge("smolit_agent_window_failures", "Failures in the last closed window"),
            window_latency_p95=gauge("smolit_agent_window_latency_p95_seconds", "p95 answer latency, last window"),
            window_mean_rating=gauge("smolit_agent_window_mean_rating", "Mean feedback rating, last window"),
            window_negative_rate=gauge("smolit_agent_window_negative_rate", "Share of negative feedback, last window"),
        )
