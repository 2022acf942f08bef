"""Stream metrics into Prometheus: the latest `AgentMetricsWindow` per agent and window length, and agent flags.

The stream processors publish windows on the agent-metrics topic; this projection turns the last value per key into
gauges so dashboards read per-agent quality (mean rating, negative ratio, failures) like any other metric.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Gauge

from smolit.contracts import AgentMetricsWindow, Event, Lifecycle
from smolit.contracts.lifecycle import agent_of

from .kafka import Outgoing


def window_kind(window: AgentMetricsWindow) -> str:
    """A window's length as a label: `1m`, `5m`, `1h`, `90s`."""
    seconds = round((window.window_end - window.window_start).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class AgentGauges(NamedTuple):
    requests: Gauge
    failures: Gauge
    latency_p50: Gauge
    latency_p95: Gauge
    feedback: Gauge
    mean_rating: Gauge
    negative_ratio: Gauge
    cost: Gauge
    routing_score: Gauge
    flagged: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AgentGauges:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("agent", "window")) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry)

        return cls(
            requests=gauge("smolit_agent_window_requests", "Requests routed to the agent in its latest window"),
            failures=gauge("smolit_agent_window_failures", "Failed tasks in the agent's latest window"),
            latency_p50=gauge("smolit_agent_window_latency_p50_seconds", "Median answer latency, latest window"),
            latency_p95=gauge("smolit_agent_window_latency_p95_seconds", "95th percentile answer latency"),
            feedback=gauge("smolit_agent_window_feedback", "Feedback events in the agent's latest window"),
            mean_rating=gauge("smolit_agent_window_mean_rating", "Mean feedback rating in the latest window"),
            negative_ratio=gauge("smolit_agent_window_negative_ratio", "Share of negative feedback (0–1)"),
            cost=gauge("smolit_agent_window_cost_usd", "LLM cost in USD in the agent's latest window"),
            routing_score=gauge("smolit_agent_window_routing_score", "Mean router score of requests sent to the agent"),
            flagged=gauge("smolit_agent_flagged", "1 while the agent's latest lifecycle event is a flag", ("agent",)),
        )


class AgentGaugeProjection:
    """Consumer-loop handler for the agent-metrics and agent-lifecycle topics; publishes nothing."""

    def __init__(self, gauges: AgentGauges) -> None:
        self._gauges = gauges
        self._latest: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        self._lifecycle = Lifecycle()
        self.retired: frozenset[str] = frozenset()
        """Agents retired on the lifecycle log (the gateway refuses requests naming them); swapped, never mutated."""

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        for event in events:
            if isinstance(event, AgentMetricsWindow):
                self._window(event)
            elif self._lifecycle.apply(event):
                agent = agent_of(event)  # type: ignore[arg-type]  # apply() accepted it: a lifecycle event
                self._gauges.flagged.labels(agent).set(1 if agent in self._lifecycle.flags else 0)
                self.retired = frozenset(self._lifecycle.retired)
        return []

    def _window(self, w: AgentMetricsWindow) -> None:
        kind = window_kind(w)
        stamp = (w.window_end, w.occurred_at)
        if stamp < self._latest.get((w.agent, kind), stamp):
            return  # an older window arriving late does not overwrite a newer one
        self._latest[(w.agent, kind)] = stamp
        g, labels = self._gauges, (w.agent, kind)
        g.requests.labels(*labels).set(w.requests)
        g.failures.labels(*labels).set(w.failures)
        g.feedback.labels(*labels).set(w.feedback_count)
        g.cost.labels(*labels).set(w.cost_usd)
        optional = (
            (g.latency_p50, None if w.latency_p50_ms is None else w.latency_p50_ms / 1000),
            (g.latency_p95, None if w.latency_p95_ms is None else w.latency_p95_ms / 1000),
            (g.mean_rating, w.mean_rating),
            (g.negative_ratio, w.negative_rate),
            (g.routing_score, w.mean_routing_score),
        )
        for gauge, value in optional:
            if value is not None:
                gauge.labels(*labels).set(value)
            else:  # nothing measured in this window: drop the previous window's value rather than repeat it
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
