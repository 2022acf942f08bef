"""The learner's start-up snapshot of the registry: answers the first alias reads and the champion's weights without
opening MLflow; every later read goes to the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from smolit.services.registry_snapshot import SnapshotRegistry

NAME = "smolit-router"


@dataclass
class FakeRegistry:
    aliases: dict[str, str] = field(default_factory=dict)
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def version_for(self, name: str, alias: str) -> str | None:
        self.calls.append(f"version_for {alias}")
        return self.aliases.get(alias)

    def load(self, name: str, version: str) -> dict[str, Any]:
        self.calls.append(f"load {version}")
        return self.payloads[version]

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version


def _never() -> FakeRegistry:
    raise AssertionError("the registry was opened")


def _snapshot(opener, path: Path, key: str = "sqlite:///m.db#smolit-router") -> SnapshotRegistry:
    return SnapshotRegistry(opener, path, key=key, name=NAME)


def test_a_restart_reads_the_champion_from_the_snapshot_then_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "learner" / "registry-snapshot.pt"
    registry = FakeRegistry({"champion": "3", "previous": "2"}, {"3": {"w": torch.ones(2)}})
    first = _snapshot(lambda: registry, path)
    assert (first.version_for(NAME, "champion"), first.version_for(NAME, "previous")) == ("3", "2")
    assert torch.equal(first.load(NAME, "3")["w"], torch.ones(2))
    assert path.exists()

    restarted = _snapshot(_never, path)  # what the learner asks at start: no MLflow
    assert (restarted.version_for(NAME, "champion"), restarted.version_for(NAME, "previous")) == ("3", "2")
    assert torch.equal(restarted.load(NAME, "3")["w"], torch.ones(2))
    assert not restarted.opened

    registry.aliases["champion"] = "4"  # promoted while the learner was down: the next read sees it
    registry.payloads["4"] = {"w": torch.zeros(2)}
    opened = _snapshot(lambda: registry, path)
    opened.version_for(NAME, "champion")
    assert opened.version_for(NAME, "champion") == "4" and opened.opened


def test_no_champion_is_remembered_too(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.pt"
    first = _snapshot(lambda: FakeRegistry(), path)
    assert first.version_for(NAME, "champion") is None and first.version_for(NAME, "previous") is None
    restarted = _snapshot(_never, path)
    assert restarted.version_for(NAME, "champion") is None and not restarted.opened


@pytest.mark.parametrize("key", ["sqlite:///other.db#smolit-router", "sqlite:///m.db#other-router"])
def test_a_snapshot_of_another_registry_is_ignored(tmp_path: Path, key: str) -> None:
    path = tmp_path / "snapshot.pt"
    first = _snapshot(lambda: FakeRegistry({"champion": "1", "previous": "1"}, {"1": {}}), path)
    first.version_for(NAME, "champion"), first.version_for(NAME, "previous"), first.load(NAME, "1")
    registry = FakeRegistry({"champion": "7"})
    other = _snapshot(lambda: registry, path, key)
    assert other.version_for(NAME, "champion") == "7" and registry.calls == ["version_for champion"]


def test_an_unreadable_snapshot_falls_back_to_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.pt"
    path.write_bytes(b"not a snapshot")
    registry = FakeRegistry({"champion": "2"})
    assert _snapshot(lambda: registry, path).version_for(NAME, "champion") == "2"
