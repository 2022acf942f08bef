"""The learner's view of the MLflow registry with a start-up snapshot on local disk.

Importing MLflow and opening its store took 3-10 s of the learner's restart (the fault drill: 22 s from kill -9 to
ready, 10 s of it before the first consumer started). Only three answers are needed to start: which versions hold
`champion` and `previous`, and the champion's weights. `SnapshotRegistry` answers those from
`<data dir>/learner/registry-snapshot.pt` (written whenever the learner reads or moves those aliases) and opens
MLflow at the first other call, in practice the first candidate, when the learner re-reads the aliases from the
registry anyway (`Learner._follow_registry`): a promotion made while the learner was down is picked up there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from smolit.infra.registry import ModelRegistry

log = structlog.get_logger("smolit.services.registry_snapshot")

_KEPT = ("champion", "previous")
"""Aliases whose versions (and weights) the snapshot keeps."""


class SnapshotRegistry:
    """A `ModelRegistry` for one registered model, opened lazily; each alias's first read may come from the
    snapshot, every later read and every write goes to the registry (and refreshes the snapshot)."""

    def __init__(self, opener: Callable[[], ModelRegistry], path: Path | None, key: str = "", name: str = "") -> None:
        """`path` None: no snapshot, only the lazy opening."""
        self._opener, self._path, self._key, self._name = opener, path, key, name
        self._registry: ModelRegistry | None = None
        self._lock = threading.Lock()
        self._aliases: dict[str, str | None] = {}
        self._payloads: dict[str, dict[str, Any]] = {}
        self._unread = set(self._read())  # aliases whose first read the snapshot answers

    @property
    def opened(self) -> bool:
        return self._registry is not None

    def registry(self) -> ModelRegistry:
        with self._lock:
            if self._registry is None:
                self._registry = self._opener()
            return self._registry

    def version_for(self, name: str, alias: str) -> str | None:
        if name == self._name and alias in self._unread:
            self._unread.discard(alias)
            return self._aliases[alias]
        version = self.registry().version_for(name, alias)
        self._remember_alias(name, alias, version)
        return version

    def load(self, name: str, version: str) -> dict[str, Any]:
        if name == self._name and version in self._payloads:  # a version's weights never change
            return self._payloads[version]
        payload = self.registry().load(name, version)
        if name == self._name:
            self._payloads[version] = payload
            self._save()
        return payload

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.registry().set_alias(name, alias, version)
        self._remember_alias(name, alias, version)

    def log_version(self, name: str, payload: dict[str, Any], **kwargs: Any) -> Any:
        registered = self.registry().log_version(name, payload, **kwargs)
        if name == self._name:  # kept in case it becomes the champion; older candidates' weights are dropped
            kept = {v for v in self._aliases.values() if v is not None}
            self._payloads = {v: p for v, p in self._payloads.items() if v in kept}
            self._payloads[str(registered.version)] = payload
        return registered

    def __getattr__(self, attr: str) -> Any:  # anything else: the registry itself
        return getattr(self.registry(), attr)

    def _remember_alias(self, name: str, alias: str, version: str | None) -> None:
        if name != self._name or alias not in _KEPT:
            return
        self._unread.discard(alias)
        self._aliases[alias] = version
        self._save()

    def _read(self) -> list[str]:
        """Load the snapshot; the aliases it can answer (none when missing, unreadable or of another registry)."""
        import torch

        if self._path is None or not self._path.exists():
            return []
        try:
            saved = torch.load(self._path, weights_only=True)
            if saved.get("registry") != self._key or set(saved["aliases"]) != set(_KEPT):
                return []
            aliases = {a: (None if v is None else str(v)) for a, v in saved["aliases"].items()}
            payloads = {str(v): p for v, p in saved["payloads"].items()}
            if any(v is not None and v not in payloads for a, v in aliases.items() if a == "champion"):
                return []
        except Exception as exc:  # unreadable or from an older format: the registry is the truth anyway
            log.warning("learner registry snapshot not usable", path=str(self._path), error=repr(exc))
            return []
        self._aliases, self._payloads = aliases, payloads
        return list(_KEPT)

    def _save(self) -> None:
        """Write the snapshot once both aliases are known (and the champion's weights, when there is one)."""
        import torch

        if self._path is None or set(self._aliases) != set(_KEPT):
            return
        champion = self._aliases["champion"]
        if champion is not None and champion not in self._payloads:
            return
        kept = {v: self._payloads[v] for v in self._aliases.values() if v is not None and v in self._payloads}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            partial = self._path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"registry": self._key, "aliases": dict(self._aliases), "payloads": kept}, partial)
            partial.replace(self._path)
        except OSError as exc:  # a read-only data dir costs only restart time
            log.warning("learner registry snapshot not written", path=str(self._path), error=repr(exc))
