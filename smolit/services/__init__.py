"""Process wiring for one service: router, agents, streams, gateway or learner (`smolit run SERVICE`).

One module per service process; `wiring` holds what they share (settings, producer, pool, start-up checks).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Literal

import structlog

from smolit.infra.logging import configure_logging
from smolit.infra.settings import Settings

from .agents import run_agents
from .gateway import run_gateway
from .learner import discovery_config, flag_monitor, run_learner
from .router import run_router
from .streams import run_streams, streams_config
from .wiring import Wiring, connect, follow_topics, limit_threads, redact, wiring

Service = Literal["router", "agents", "streams", "gateway", "learner"]
SERVICES: tuple[Service, ...] = ("router", "agents", "streams", "gateway", "learner")
#: Setting that holds each service's Prometheus port (the gateway serves /metrics on its HTTP port).
METRICS_PORT_SETTING: dict[Service, str] = {
    "router": "router_metrics_port",
    "agents": "agents_metrics_port",
    "streams": "streams_metrics_port",
    "gateway": "port",
    "learner": "learner_metrics_port",
}

__all__ = [
    "METRICS_PORT_SETTING",
    "SERVICES",
    "Service",
    "Wiring",
    "connect",
    "discovery_config",
    "flag_monitor",
    "follow_topics",
    "redact",
    "run_service",
    "streams_config",
]


def run_service(service: Service, settings: Settings) -> None:
    """Run one service until SIGINT/SIGTERM."""
    configure_logging(settings.log_level, settings.log_json)
    limit_threads(settings.threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with wiring(settings, service) as w:
        runner: Callable[[Wiring, threading.Event], None] = {
            "router": run_router,
            "agents": run_agents,
            "streams": run_streams,
            "gateway": run_gateway,
            "learner": run_learner,
        }[service]
        structlog.contextvars.bind_contextvars(service=service)
        runner(w, stop)
