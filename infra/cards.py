"""Agent cards from YAML files: one file per agent, validated by contracts.AgentCard."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import ValidationError

from smolit.contracts import AgentCard


class CardError(ValueError):
    """An agent card file is missing fields or invalid."""


def default_agents_dir() -> Path:
    """The demo agents shipped with Smolit."""
    return Path(str(files("smolit.demo") / "agents"))


def load_cards(directory: Path | None = None) -> dict[str, AgentCard]:
    """All `*.yaml` cards in a folder, by name. Raises CardError naming the bad file."""
    folder = directory or default_agents_dir()
    if not folder.is_dir():
        raise CardError(f"agents folder {folder} does not exist (setting SMOLIT_AGENTS_DIR)")
    cards: dict[str, AgentCard] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            card = AgentCard.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as exc:
            raise CardError(f"{path}: {exc}") from exc
        if card.name in cards:
            raise CardError(f"{path}: agent {card.name!r} is defined twice")
        cards[card.name] = card
    if not cards:
        raise CardError(f"no agent cards (*.yaml) in {folder}")
    return cards
