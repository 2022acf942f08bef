"""The Grafana dashboard, Prometheus scrape config and compose file agree with the metrics the services export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from smolit.agents import AgentMetrics
from smolit.gateway import GatewayMetrics
from smolit.infra.agent_gauges import AgentGauges
from smolit.infra.metrics import ConsumerMetrics
from smolit.router import RouterMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "smolit.json"
METRIC = re.compile(r"\b(smolit_[a-z0-9_]+)\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def exported_names() -> set[str]:
    """Every sample name the services can expose, from their real metric bundles on one registry."""
    registry = CollectorRegistry()
    for bundle in (ConsumerMetrics, RouterMetrics, AgentMetrics, GatewayMetrics, AgentGauges):
        bundle.create(registry)
    names: set[str] = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def test_every_dashboard_query_names_an_exported_metric() -> None:
    """Each PromQL query in the dashboard names only metrics that some service really registers."""
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    queries = list(_queries(dashboard))
    assert len(queries) >= 15
    for title, expr in queries:
        named = set(METRIC.findall(expr))
        assert named, f"{title}: query names no smolit metric: {expr}"
        assert named <= exported, f"{title}: {sorted(named - exported)} not exported by any service"


def test_every_panel_has_a_query_and_a_unique_id() -> None:
    """Data panels carry at least one query; ids and grid positions do not collide."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard["panels"]))
    assert all(p.get("targets") for p in panels if p["type"] != "row")
    assert len({p["id"] for p in panels}) == len(panels)
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(set(cells)) == len(cells)


def test_dashboard_covers_the_operating_questions() -> None:
    """Quality, latency, throughput, lag, router version and flagged agents each have a panel."""
    queries = " ".join(expr for _, expr in _queries(json.loads(DASHBOARD.read_text())))
    for metric in (
        "smolit_feedback_total",
        "smolit_gateway_request_seconds_bucket",
        "smolit_routing_decisions_total",
        "smolit_consumer_lag_messages",
        "smolit_router_model_info",
        "smolit_agent_flagged",
        "smolit_dead_letters_total",
        "smolit_llm_cost_usd_total",
    ):
        assert metric in queries, metric


@pytest.mark.parametrize("path", ["datasources/prometheus.yml", "dashboards/smolit.yml"])
def test_grafana_provisioning_files_parse(path: str) -> None:
    """Provisioning files are valid YAML with the version Grafana expects."""
    config = yaml.safe_load((ROOT / "infra" / "grafana" / "provisioning" / path).read_text())
    assert config["apiVersion"] == 1
