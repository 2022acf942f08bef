"""`smolit models list|promote|rollback`: the router model registry from the command line.

Promotion and rollback move the registry aliases and announce it on the router-models topic, so every running
router swaps within a batch; the learner picks the new champion up at its next candidate.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from smolit.contracts import Event, RolledBack, RouterModelPromoted, Topic, TopicNames
from smolit.infra.registry import CHAMPION, PREVIOUS, ModelRegistry, open_registry
from smolit.infra.settings import Settings, load_settings

from .errors import SetupError

console = Console(stderr=True)
out = Console()
models_app = typer.Typer(no_args_is_help=True, help="Router models in the MLflow registry.")


def _registry(settings: Settings) -> ModelRegistry:
    try:
        return open_registry(settings.tracking_uri, settings.data_dir)
    except Exception as exc:
        raise SetupError(
            f"model registry at {settings.tracking_uri} is not usable (setting SMOLIT_MLFLOW_TRACKING_URI): {exc}"
        ) from exc


@models_app.command("list")
def list_models(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every registered router version with its aliases and holdout metrics."""
    settings = load_settings()
    versions = _registry(settings).versions(settings.router_registry_name)
    rows = [
        {
            "version": v.version,
            "aliases": list(v.aliases),
            "created": datetime.fromtimestamp(v.created_ms / 1000, UTC).isoformat(timespec="seconds"),
            **{k: v.metrics.get(k) for k in ("accuracy", "macro_f1", "log_loss", "examples_seen", "holdout_size")},
        }
        for v in versions
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no router models yet (the learner registers one after enough feedback)")
        return
    table = Table("version", "aliases", "accuracy", "macro F1", "log-loss", "examples", "created")
    for r in rows:
        table.add_row(
            r["version"],
            ", ".join(r["aliases"]),
            *(f"{r[k]:.3f}" if r[k] is not None else "-" for k in ("accuracy", "macro_f1", "log_loss")),
            f"{r['examples_seen']:.0f}" if r["examples_seen"] is not None else "-",
            r["created"],
        )
    out.print(table)


@models_app.command("promote")
def promote(version: Annotated[str, typer.Argument(help="Registry version to make champion.")]) -> None:
    """Make VERSION the champion (the current one becomes `previous`)."""
    settings = load_settings()
    registry = _registry(settings)
    name = settings.router_registry_name
    _require(registry, name, version)
    current = registry.version_for(name, CHAMPION)
    if current == version:
        raise SetupError(f"version {version} is already the champion")
    if current is not None:
        registry.set_alias(name, PREVIOUS, current)
    registry.set_alias(name, CHAMPION, version)
    event = RouterModelPromoted(
        correlation_id=uuid.uuid4(), producer="cli", registry_name=name, version=version, previous_version=current
    )
    _announce(settings, event)
    typer.echo(f"version {version} is the champion (previous: {current or 'none'})")


@models_app.command("rollback")
def rollback(
    to: Annotated[str | None, typer.Option("--to", help="Version to restore (default: the `previous` alias).")] = None,
    reason: Annotated[str, typer.Option(help="Why, recorded in the RolledBack event.")] = "manual rollback",
) -> None:
    """Restore the previous champion (or --to VERSION)."""
    settings = load_settings()
    registry = _registry(settings)
    name = settings.router_registry_name
    current = registry.version_for(name, CHAMPION)
    target = to or registry.version_for(name, PREVIOUS)
    if current is None or target is None:
        raise SetupError("nothing to roll back to: no champion or no previous version (use --to VERSION)")
    _require(registry, name, target)
    registry.set_alias(name, CHAMPION, target)
    registry.set_alias(name, PREVIOUS, current)
    event = RolledBack(
        correlation_id=uuid.uuid4(),
        producer="cli",
        registry_name=name,
        version=target,
        from_version=current,
        reason=reason,
    )
    _announce(settings, event)
    typer.echo(f"rolled back: version {target} is the champion again (was {current})")


def _require(registry: ModelRegistry, name: str, version: str) -> None:
    if version not in {v.version for v in registry.versions(name)}:
        raise SetupError(f"{name} has no version {version} (see `smolit models list`)")


def _announce(settings: Settings, event: Event) -> None:
    """Tell running routers; without a running system the alias change alone takes effect at their next start."""
    from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing

    from .stack import running_bootstrap

    try:
        bootstrap = running_bootstrap(settings)
    except SetupError:
        console.print("no running Smolit found: routers load the new champion when they start")
        return
    profile = KafkaProfile(bootstrap, embedded=settings.tansu_profile)
    producer = EventProducer(profile.producer(), TopicNames(settings.topic_prefix))
    try:
        producer.send(Outgoing(Topic.ROUTER_MODELS, "router", event))
        producer.flush(10)
    finally:
        producer.close()
