"""`smolit kb entities`: the invoice and contract fields the `entities` ingest step stored for an agent's documents."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from smolit.infra.settings import load_settings

from .errors import SetupError

out = Console()


def entity_rows(entries: list[tuple[str, str | None, Any]]) -> list[dict[str, Any]]:
    """One row per document: source, title and its `entities` metadata (kind, model(s), fields, check, seconds)."""
    return [{"source": source, "title": title, **(meta or {})} for source, title, meta in entries]


def _value(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def kb_entities(
    agent: Annotated[str, typer.Option(help="Agent whose documents are listed.")],
    source: Annotated[str | None, typer.Option(help="Only this document (its source as stored).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Invoice and contract fields extracted at ingestion (cards with `pipeline: {ingest: [entities]}`), with the
    model(s) that extracted them and the plausibility check."""
    from smolit.infra.knowledge import KnowledgeStore

    from .cli import _cards, _pool

    settings = load_settings()
    card = _cards(settings).get(agent)
    if card is None:
        raise SetupError(f"unknown agent {agent!r}; known: {', '.join(sorted(_cards(settings)))}")
    with _pool(settings) as pool:
        rows = entity_rows(KnowledgeStore(pool).metadata_entries(card.knowledge_collection, "entities", source))
    if as_json:
        out.print_json(json.dumps({"agent": agent, "documents": rows}))
        return
    if not rows:
        hint = "" if "entities" in card.pipeline.ingest else " (its card has no `entities` ingest step)"
        out.print(f"no extracted fields for agent {agent!r}{hint}")
        return
    table = Table("document", "kind", "model", "fields", "check")
    for r in rows:
        fields = "\n".join(f"{k}: {_value(v)}" for k, v in (r.get("fields") or {}).items()) or r.get("error", "-")
        check = r.get("check") or {}
        failed = [k for k, ok in check.items() if k != "passed" and not ok]
        verdict = "-" if not check else "passed" if check.get("passed") else "failed: " + ", ".join(failed)
        table.add_row(r["title"] or r["source"], r.get("kind", "-"), r.get("model", "-"), fields, verdict)
    out.print(table)
