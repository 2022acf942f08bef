"""Improvement steps for a flagged agent, and agent versions recorded as MLflow runs.

The step taken automatically is small and honest: a challenger card, announced as `AgentUpdated` with the next card
version. When the flagged version replaced an earlier one that was not flagged (an edit, a deployment), the
challenger is that earlier version's settings (a rollback on trial); otherwise it is the current card with a wider
retrieval (`top_k` doubled, at most 50). Retirement is only proposed (an operator runs
`smolit agents retire`). Every card version the learner touches is an MLflow run in the `smolit-agents`
experiment (params = the card's settings, tags `agent`/`version`, artifact `card.json`), so versions can be
compared and an earlier card restored from its run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from smolit.contracts import AgentCard
from smolit.infra.registry import ModelRegistry

log = structlog.get_logger("smolit.learner.improvement")
MAX_TOP_K = 50
AGENT_EXPERIMENT = "smolit-agents"


def challenger_card(card: AgentCard, default_top_k: int) -> AgentCard | None:
    """The next card version with twice the passages retrieved; None when retrieval cannot widen further."""
    current = card.retrieval.top_k or default_top_k
    wider = min(MAX_TOP_K, max(current + 1, 2 * current))
    if wider <= current:
        return None
    retrieval = card.retrieval.model_copy(update={"top_k": wider})
    return card.model_copy(update={"retrieval": retrieval, "version": card.version + 1})


def rollback_card(card: AgentCard, earlier: AgentCard | None) -> AgentCard | None:
    """The settings of `earlier` (a version that was replaced while not flagged) as the next card version; None when
    there is none or it equals the current card apart from the version number."""
    if earlier is None or earlier.model_copy(update={"version": card.version}) == card:
        return None
    return earlier.model_copy(update={"version": card.version + 1})


def card_params(card: AgentCard) -> dict[str, Any]:
    """A card's settings as flat MLflow params (long texts are cut; the whole card is the run's `card.json`)."""
    return {
        "description": card.description[:500],
        "domain": card.domain or card.name,
        "collection": card.knowledge_collection,
        "examples": len(card.examples),
        "llm.backend": card.llm.backend or "default",
        "llm.model": card.llm.model or "default",
        "llm.temperature": card.llm.temperature,
        "llm.max_tokens": card.llm.max_tokens,
        "llm.system_prompt": card.llm.system_prompt[:500],
        "retrieval.top_k": card.retrieval.top_k if card.retrieval.top_k is not None else "default",
        "retrieval.min_score": card.retrieval.min_score,
        "consults": ",".join(card.consults),
        "tools": ",".join(card.tools),
    }


class VersionLog(Protocol):
    def record(self, card: AgentCard, *, reason: str, metrics: Mapping[str, float]) -> None: ...


class MlflowAgentVersions:
    """One MLflow run per (agent, card version); recording an already recorded version does nothing."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def card(self, agent: str, version: int) -> AgentCard | None:
        """The card recorded for (agent, version), from its run's `card.json`; None when never recorded."""
        runs = self._registry.runs_tagged({"agent": agent, "version": str(version)})
        if not runs:
            return None
        return AgentCard.model_validate_json(self._registry.read_text(runs[0], "card.json"))

    def record(self, card: AgentCard, *, reason: str, metrics: Mapping[str, float]) -> None:
        tags = {"agent": card.name, "version": str(card.version)}
        if self._registry.runs_tagged(tags):
            return
        self._registry.log_run(
            card_params(card),
            dict(metrics),
            tags=tags | {"reason": reason},
            run_name=f"{card.name}-v{card.version}",
            texts={"card.json": card.model_dump_json(indent=2)},
        )
        log.info("agent version recorded", agent=card.name, version=card.version, reason=reason)
