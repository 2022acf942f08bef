"""Model manager: pipeline models loaded by `name@alias` or by (task type, domain), cached, and hot-swapped.

The registry (MLflow, behind the `ModelSource` port) says which version holds an alias; a loader per task type
turns a version into a ready model. The manager keeps one loaded instance per (name, version) and one current
version per (name, alias). A promotion (`ModelPromoted` on the router-models topic) makes it re-read the alias and
load the new version before it swaps the reference: work that already holds the old instance finishes with it,
the next `get` returns the new one. Nothing here blocks a caller while a new version loads.

It lives in infra because two services use it: the agents (OCR of attachments) and the gateway (the sentiment
model behind comment-only feedback). It needs only contracts and the registry port, so neither service imports
the other; `smolit.agents` re-exports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from smolit.contracts import Event, ModelPromoted, RolledBack
from smolit.infra.kafka import Outgoing

log = structlog.get_logger("smolit.models")

DEFAULT_ALIAS = "champion"


class ModelSource(Protocol):
    """What the manager needs from a model registry (`smolit.infra.registry.ModelRegistry` implements it)."""

    def version_for(self, name: str, alias: str) -> str | None: ...

    def model_tags(self) -> dict[str, dict[str, str]]:
        """Registered model name -> its tags (task_type, input_format, domain, ...)."""
        ...

    def version_tags(self, name: str, version: str) -> dict[str, str]: ...


Loader = Callable[[str, str, Mapping[str, str]], Any]
"""(registered name, version, the version's tags) -> a ready model; one loader per `task_type` tag."""


class ModelNotFound(LookupError):
    """No registered model or version answers the reference (unknown name, alias not set, no loader)."""


@dataclass(frozen=True)
class Loaded:
    """A ready model and what it is in the registry."""

    name: str
    version: str
    alias: str
    task_type: str
    model: Any


def parse_ref(ref: str) -> tuple[str, str]:
    """`name@alias` (alias defaults to champion) -> (name, alias)."""
    name, _, alias = ref.partition("@")
    if not name:
        raise ModelNotFound(f"model reference {ref!r} has no name (use NAME or NAME@ALIAS)")
    return name, alias or DEFAULT_ALIAS


class ModelManager:
    """Resolves, loads, caches and swaps registered models; thread-safe (consumer loops share one manager)."""

    def __init__(
        self,
        source: Callable[[], ModelSource],
        loaders: Mapping[str, Loader],
        on_change: Callable[[Loaded], None] | None = None,
    ) -> None:
        self._on_change = on_change  # told the new current model of a (name, alias): metrics
        self._open_source = source  # opening MLflow takes seconds: only when a model is first asked for
        self._source: ModelSource | None = None
        self._loaders = dict(loaders)
        self._current: dict[tuple[str, str], Loaded] = {}
        self._instances: dict[tuple[str, str], Loaded] = {}
        self._tags: dict[str, dict[str, str]] | None = None
        self._lock = threading.Lock()  # guards the maps; loads happen outside it
        self._load_lock = threading.Lock()  # one load at a time (two callers of a cold model load it once)

    @property
    def source(self) -> ModelSource:
        with self._lock:
            if self._source is None:
                self._source = self._open_source()
            return self._source

    def current(self) -> dict[str, str]:
        """`name@alias` -> version of every model in use."""
        with self._lock:
            return {f"{n}@{a}": loaded.version for (n, a), loaded in sorted(self._current.items())}

    def get(self, ref: str) -> Loaded:
        """The model `ref` (`name@alias`) names: the cached current version, else resolved and loaded now."""
        name, alias = parse_ref(ref)
        with self._lock:
            found = self._current.get((name, alias))
        if found is not None:
            return found
        version = self.source.version_for(name, alias)
        if version is None:
            raise ModelNotFound(f"no version of {name!r} holds the alias {alias!r} (see `smolit models list`)")
        loaded = self._load(name, version, alias)
        with self._lock:
            current = self._current.setdefault((name, alias), loaded)  # a concurrent swap that won stays
        if current is loaded and self._on_change is not None:
            self._on_change(loaded)
        return current

    def resolve(self, task_type: str, domain: str | None = None, prefer: Sequence[str] = ()) -> str:
        """The registered model for a task among those tagged with `task_type`: the first of `prefer` (e.g. a
        card's candidates) that is one, else the first by name of those tagged with `domain` (when any is), else
        the first by name. Raises ModelNotFound."""
        tags = self._all_tags()
        matches = sorted(n for n, t in tags.items() if t.get("task_type") == task_type)
        if not matches:
            raise ModelNotFound(
                f"no registered model has task_type {task_type!r}"
                " (the agents service and `smolit models list` register the shipped models, OCR included)"
            )
        if chosen := next((n for n in prefer if n in matches), None):
            return chosen
        if domain is not None and (narrow := [n for n in matches if tags[n].get("domain") == domain]):
            return narrow[0]
        return matches[0]

    def for_task(self, task_type: str, domain: str | None = None, prefer: Sequence[str] = ()) -> Loaded:
        return self.get(f"{self.resolve(task_type, domain, prefer)}@{DEFAULT_ALIAS}")

    def promoted(self, name: str, alias: str = DEFAULT_ALIAS, version: str | None = None) -> bool:
        """The alias of `name` moved: re-read it (the registry is the truth; `version` is the event's word for it),
        load that version and swap it in. Returns whether the current model changed; models not in use are
        resolved fresh at their first `get` anyway."""
        with self._lock:
            before = self._current.get((name, alias))
        if before is None:
            return False
        target = self.source.version_for(name, alias) or version
        if target is None or target == before.version:
            return False
        loaded = self._load(name, target, alias)
        with self._lock:
            self._current[(name, alias)] = loaded
        if self._on_change is not None:
            self._on_change(loaded)
        log.info("model swapped", model=name, alias=alias, version=target, previous=before.version)
        return True

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        """Router-models topic handler: promotions and rollbacks of models in use swap them."""
        for event in events:
            if isinstance(event, ModelPromoted):
                self.promoted(event.registry_name, event.alias, event.version)
            elif isinstance(event, RolledBack):
                self.promoted(event.registry_name, DEFAULT_ALIAS, event.version)
        return []

    def _all_tags(self) -> dict[str, dict[str, str]]:
        with self._lock:
            tags = self._tags
        if tags is None:
            tags = self.source.model_tags()
            with self._lock:
                self._tags = tags
        return tags

    def _load(self, name: str, version: str, alias: str) -> Loaded:
        with self._load_lock:
            with self._lock:
                cached = self._instances.get((name, version))
            if cached is not None:
                return Loaded(name, version, alias, cached.task_type, cached.model)
            task_type = self._all_tags().get(name, {}).get("task_type")
            if task_type is None:  # registered after the tags were read: read them again once
                with self._lock:
                    self._tags = None
                task_type = self._all_tags().get(name, {}).get("task_type")
            loader = self._loaders.get(task_type or "")
            if loader is None:
                raise ModelNotFound(f"no loader for {name!r} (task_type {task_type!r}; known: {sorted(self._loaders)})")
            model = loader(name, version, self.source.version_tags(name, version))
            loaded = Loaded(name, version, alias, task_type or "", model)
            with self._lock:
                self._instances[(name, version)] = loaded
            log.info("model loaded", model=name, version=version, task_type=task_type)
            return loaded
