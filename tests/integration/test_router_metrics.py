"""The router's metrics name the scorer that decides and count decisions per agent."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry

from smolit.contracts import RequestReceived
from smolit.infra.cards import load_cards
from smolit.router import Router, RouterMetrics

pytestmark = pytest.mark.integration


def test_router_exports_its_model_version_and_decisions_per_agent(embedder) -> None:
    """`smolit_router_model_info{version}` is set at start; each decision counts for its agent."""
    registry = CollectorRegistry()
    router = Router(load_cards(), embedder, fallback="general", threshold=0.25, metrics=RouterMetrics.create(registry))
    assert registry.get_sample_value("smolit_router_model_info", {"version": "similarity-v1"}) == 1
    text = "What does the limitation of liability clause in these terms mean?"
    router.handle([RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text=text)])
    assert registry.get_sample_value("smolit_routing_decisions_total", {"agent": "legal"}) == 1
