"""The router process: requests in, routing decisions out; follows promotions, A/B tests and agent lifecycle."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from smolit.contracts import Event, Topic
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
from smolit.infra.kafka import Outgoing
from smolit.infra.settings import Settings

from ..errors import SetupError
from .wiring import Wiring, follow_lifecycle, log, run_consumers

if TYPE_CHECKING:
    from smolit.infra.registry import ModelRegistry
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
        strategy=w.settings.exploration_strategy,
        states=states,
    )
    catalog = CardCatalog(load_cards(w.settings.agents_dir), lambda cards, _: router.use_cards(cards))

    def lifecycle(events: Sequence[Event]) -> list[Outgoing]:
        catalog.handle(events)  # agents created or updated at runtime
        return states.handle(events)  # flags and retirements (demotion)

    agents = follow_lifecycle(w, "router", lifecycle)  # replayed before the first request, then followed
    cache = ChampionCache(w.settings)
    registry = lazy_registry(w.settings)  # one MLflow client for promotions and A/B versions
    watcher = ModelWatcher(
        router,
        champion_loader(w.settings, router, cache, registry),
        version_loader(w.settings, router, registry),
        registry_name=w.settings.router_registry_name,
    )
    known, cached = cache.load(router)
    if known:
        # A restart routes with the champion it last loaded (or none, as then) without opening MLflow (seconds of
        # start-up); a promotion or rollback since then is on the models topic, which the models loop reads.
        router.use_network(cached)
    else:
        watcher.refresh()  # route with the registry's champion from the first request, if there is one
    # A running A/B test is known before the first request (its group may have committed past `ExperimentStarted`).
    with contextlib.suppress(TopicMissing):
        watcher.handle(read_topic_events(w.profile.consumer("router-experiments"), w.topics(Topic.ROUTER_MODELS)))
    loop = w.loop("router", [Topic.REQUESTS], router.handle)
    # Every router instance must hear every promotion and every flag, so each reads those topics under its own group.
    models = w.loop(f"router-models-{w.instance}", [Topic.ROUTER_MODELS], watcher.handle, dedupe=False)
    run_consumers(w, "router", [loop, models, agents], stop, w.settings.router_metrics_port)


class ChampionCache:
    """The champion the router last loaded (or that there was none), on local disk (`<data dir>/router/
    champion.pt`), for a fast restart. Keyed by the registry (tracking URI and model name): a cache written for
    another registry is ignored."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.data_dir / "router" / "champion.pt"
        self.registry = f"{settings.tracking_uri}#{settings.router_registry_name}"

    def save(self, version: str | None, payload: dict[str, object] | None) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")  # router instances may share the data dir
        torch.save({"registry": self.registry, "version": version, "payload": payload}, partial)
        partial.replace(self.path)

    def load(self, router: Router) -> tuple[bool, NetworkScorer | None]:
        """(False, None): nothing usable cached; (True, None): no champion then; (True, scorer): that champion."""
        import torch

        from smolit.router.network import NetworkScorer

        if not self.path.exists():
            return False, None
        try:
            saved = torch.load(self.path, weights_only=True)
            if saved.get("registry") != self.registry:
                return False, None
            if saved["version"] is None:
                return True, None
            return True, NetworkScorer(saved["payload"], router.features, str(saved["version"]))
        except Exception as exc:  # unreadable or from an older format: the registry is the truth anyway
            log.warning("router champion cache not usable", path=str(self.path), error=repr(exc))
            return False, None


def lazy_registry(settings: Settings) -> Callable[[], ModelRegistry]:
    """The router's MLflow registry, opened at first use: not at start-up, when the champion cache answers."""

    @functools.cache
    def get() -> ModelRegistry:
        from smolit.infra.registry import open_registry

        return open_registry(settings.tracking_uri, settings.data_dir)

    return get


def champion_loader(
    settings: Settings, router: Router, cache: ChampionCache, registry: Callable[[], ModelRegistry] | None = None
) -> Callable[[], NetworkScorer | None]:
    from smolit.infra.registry import CHAMPION
    from smolit.router.network import NetworkScorer

    name = settings.router_registry_name
    registry = registry or lazy_registry(settings)

    def load() -> NetworkScorer | None:
        version = registry().version_for(name, CHAMPION)
        if version is None:
            cache.save(None, None)
            return None
        if router.network is not None and router.network.version == version:
            return router.network
        payload = registry().load(name, version)
        scorer = NetworkScorer(payload, router.features, version)
        cache.save(version, payload)
        return scorer

    return load


def version_loader(
    settings: Settings, router: Router, registry: Callable[[], ModelRegistry] | None = None
) -> Callable[[str], NetworkScorer]:
    """Loads one registry version over the router's current agents (an A/B test's treatment arm)."""
    from smolit.router.network import NetworkScorer

    name = settings.router_registry_name
    registry = registry or lazy_registry(settings)
    return lambda version: NetworkScorer(registry().load(name, version), router.features, version)
