"""The router process: requests in, routing decisions out; follows promotions, A/B tests and agent lifecycle."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from smolit.contracts import Event, Topic
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
from smolit.infra.kafka import Outgoing
from smolit.infra.settings import Settings

from ..errors import SetupError
from .wiring import Wiring, follow_lifecycle, run_consumers

if TYPE_CHECKING:
    from smolit.router import Router
    from smolit.router.network import NetworkScorer


def run_router(w: Wiring, stop: threading.Event) -> None:
    from smolit.infra.embedder import build_embedder
    from smolit.infra.kafka import TopicMissing, read_topic_events
    from smolit.router import AgentStates, ModelWatcher, Router, RouterMetrics

    try:
        states = AgentStates(w.settings.fallback_agent, w.settings.flag_demotion)
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    # Flags and retirements known before the first request is routed (the loop below then follows the topic).
    with contextlib.suppress(TopicMissing):
        states.handle(read_topic_events(w.profile.consumer("router-lifecycle"), w.topics(Topic.AGENT_LIFECYCLE)))
    router = Router(
        load_cards(w.settings.agents_dir),
        build_embedder(w.settings),
        fallback=w.settings.fallback_agent,
        threshold=w.settings.route_threshold,
        metrics=RouterMetrics.create(w.registry),
        exploration=w.settings.exploration,
        states=states,
    )
    catalog = CardCatalog(load_cards(w.settings.agents_dir), lambda cards, _: router.use_cards(cards))

    def lifecycle(events: Sequence[Event]) -> list[Outgoing]:
        catalog.handle(events)  # agents created or updated at runtime
        return states.handle(events)  # flags and retirements (demotion)

    agents = follow_lifecycle(w, "router", lifecycle)  # replayed before the first request, then followed
    watcher = ModelWatcher(router, champion_loader(w.settings, router), version_loader(w.settings, router))
    watcher.refresh()  # route with the registry's champion from the first request, if there is one
    # A running A/B test is known before the first request (its group may have committed past `ExperimentStarted`).
    with contextlib.suppress(TopicMissing):
        watcher.handle(read_topic_events(w.profile.consumer("router-experiments"), w.topics(Topic.ROUTER_MODELS)))
    loop = w.loop("smolit-router", [Topic.REQUESTS], router.handle)
    # Every router instance must hear every promotion and every flag, so each reads those topics under its own group.
    models = w.loop(f"smolit-router-models-{w.instance}", [Topic.ROUTER_MODELS], watcher.handle, dedupe=False)
    run_consumers(w, "router", [loop, models, agents], stop, w.settings.router_metrics_port)


def champion_loader(settings: Settings, router: Router) -> Callable[[], NetworkScorer | None]:
    from smolit.infra.registry import CHAMPION, open_registry
    from smolit.router.network import NetworkScorer

    registry = open_registry(settings.tracking_uri, settings.data_dir)
    name = settings.router_registry_name

    def load() -> NetworkScorer | None:
        version = registry.version_for(name, CHAMPION)
        if version is None:
            return None
        if router.network is not None and router.network.version == version:
            return router.network
        return NetworkScorer(registry.load(name, version), router.features, version)

    return load


def version_loader(settings: Settings, router: Router) -> Callable[[str], NetworkScorer]:
    """Loads one registry version over the router's current agents (an A/B test's treatment arm)."""
    from smolit.infra.registry import open_registry
    from smolit.router.network import NetworkScorer

    registry = open_registry(settings.tracking_uri, settings.data_dir)
    name = settings.router_registry_name
    return lambda version: NetworkScorer(registry.load(name, version), router.features, version)
