"""The `smolit` command line."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
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
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print JSON.")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)
out = Console()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (setting SMOLIT_DATA_DIR).")]


def main() -> None:
    try:
        app()
    except SetupError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


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
            if (dead := stack.check_services()) is not None:
                raise SetupError(dead)
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("stopped")


def _load_demo(stack: Any, progress: Progress) -> None:
    from smolit.demo.loader import load_demo_knowledge
    from smolit.infra.db import open_pool
    from smolit.infra.embedder import build_embedder
    from smolit.infra.knowledge import KnowledgeStore

    tasks: dict[str, Any] = {}

    def report(label: str, advance: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(f"knowledge {label}", total=total)
        progress.advance(tasks[label], advance)

    pool = open_pool(stack.database_url, 2)
    try:
        load_demo_knowledge(stack.settings, KnowledgeStore(pool), build_embedder(stack.settings), report)
    except Exception as exc:
        console.print(f"[yellow]demo knowledge not loaded:[/] {exc}")
    finally:
        pool.close()


@app.command()
def run(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
) -> None:
    """Run one service alone, against SMOLIT_KAFKA_BOOTSTRAP and SMOLIT_DATABASE_URL."""
    from .services import run_service

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    chosen: Service = service  # type: ignore[assignment]
    run_service(chosen, Settings())


@app.command()
def ask(
    text: Annotated[str, typer.Argument(help="Your question.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    agent: Annotated[str | None, typer.Option(help="Ask this agent directly.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id.")] = None,
    url: Annotated[str | None, typer.Option(help="Gateway URL (default: the running `smolit up`).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Ask the running system a question."""
    settings = load_settings(data_dir=data_dir)
    base = url or _gateway_url(settings)
    body = {"text": text, "agent": agent, "conversation_id": conversation}
    try:
        response = httpx.post(f"{base}/v1/requests", json=body, timeout=settings.request_timeout_s + 10)
    except httpx.HTTPError as exc:
        raise SetupError(f"gateway at {base} is not reachable ({exc}); is `smolit up` running?") from exc
    result = response.json()
    if as_json:
        out.print_json(json.dumps(result))
    elif response.status_code != 200:
        console.print(f"[red]{response.status_code}[/] {result.get('detail', result)}")
    else:
        _print_answer(result)
    if response.status_code != 200:
        raise typer.Exit(1)


def _print_answer(result: dict[str, Any]) -> None:
    score = result.get("score")
    header = f"[bold]{result['agent']}[/] (score {score:.3f})" if score is not None else f"[bold]{result['agent']}[/]"
    if result.get("low_confidence"):
        header += " [yellow]low confidence[/]"
    out.print(header)
    out.print(result.get("answer") or f"[red]failed:[/] {result.get('error')}")
    for i, src in enumerate(result.get("sources", []), start=1):
        out.print(f"  [{i}] {src.get('title') or ''} — {src['source']} (similarity {src['score']:.3f})")
    out.print(f"[dim]request {result['request_id']} · {result['latency_ms']:.0f} ms[/]")


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(exists=True, help="A text/markdown file or a folder of them.")],
    agent: Annotated[str, typer.Option(help="Agent whose knowledge collection receives the documents.")],
    data_dir: DataDir = None,
) -> None:
    """Add documents to an agent's knowledge base (unchanged files are skipped)."""
    from smolit.agents import Ingestor, read_text_files
    from smolit.infra.embedder import build_embedder
    from smolit.infra.knowledge import KnowledgeStore

    settings = load_settings(data_dir=data_dir)
    card = _cards(settings).get(agent)
    if card is None:
        raise SetupError(f"unknown agent {agent!r}; known: {', '.join(sorted(_cards(settings)))}")
    docs = list(read_text_files(path))
    with _pool(settings) as pool, _progress() as progress:
        task = progress.add_task(f"ingesting into {agent}", total=len(docs))
        counts = Ingestor(KnowledgeStore(pool), build_embedder(settings)).ingest_all(
            card.knowledge_collection,
            docs,
            domain=card.domain,
            on_progress=lambda n: progress.advance(task, n),
        )
    out.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no documents found")


@app.command()
def agents(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """List agents with their knowledge document and chunk counts."""
    from smolit.infra.knowledge import KnowledgeStore

    settings = load_settings(data_dir=data_dir)
    cards = _cards(settings)
    with _pool(settings) as pool:
        stats = {s.collection: s for s in KnowledgeStore(pool).stats()}
    rows = []
    for name, card in sorted(cards.items()):
        st = stats.get(card.knowledge_collection)
        rows.append(
            {
                "agent": name,
                "domain": card.domain or name,
                "documents": st.documents if st else 0,
                "chunks": st.chunks if st else 0,
                "description": card.description,
            }
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("agent", "domain", "documents", "chunks", "description")
    for r in rows:
        table.add_row(r["agent"], r["domain"], str(r["documents"]), str(r["chunks"]), r["description"][:70])
    out.print(table)


@bench_app.command("pipeline")
def bench_pipeline(
    requests: Annotated[int, typer.Option(help="Requests to send.")] = 500,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 32,
    rate: Annotated[float, typer.Option(help="Also measure latency at this fixed rate (req/s); 0 skips.")] = 50.0,
    storage: Annotated[
        str, typer.Option(help="Embedded broker storage: memory or s3 (durable, as `smolit up`).")
    ] = "memory",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """End-to-end throughput and latency through gateway → router → agent, plus routing latency and memory."""
    from .bench import run_pipeline_bench

    if storage not in ("memory", "s3"):
        raise typer.BadParameter("storage is memory or s3")
    result = run_pipeline_bench(requests, concurrency, rate, storage, progress=not as_json)
    out.print_json(json.dumps(result)) if as_json else out.print(result)


@bench_app.command("streams")
def bench_streams(
    events: Annotated[int, typer.Option(help="Input events in the backlog (decisions, answers, feedback).")] = 50_000,
    rate: Annotated[
        float, typer.Option(help="Input rate (events/s) of the freshness phase; keep it below capacity.")
    ] = 200.0,
    seconds: Annotated[float, typer.Option(help="Length of the freshness phase.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stream worker throughput over a backlog (events/s) and metric freshness (event time → visible) at a rate."""
    from .bench import run_streams_bench

    result = run_streams_bench(events, rate, seconds, progress=not as_json)
    out.print_json(json.dumps(result)) if as_json else out.print(result)


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


def _gateway_url(settings: Settings) -> str:
    from .stack import read_state

    state = read_state(settings.data_dir)
    return state["gateway_url"] if state else f"http://{settings.host}:{settings.port}"


def _cards(settings: Settings) -> dict[str, Any]:
    from smolit.infra.cards import load_cards

    return load_cards(settings.agents_dir)


def _pool(settings: Settings) -> ConnectionPool:
    from smolit.infra.db import DatabaseUnreachable, open_pool

    from .stack import read_state

    url = settings.database_url
    if url is None:
        state = read_state(settings.data_dir)
        if state is None:
            raise SetupError(
                f"no running Smolit in {settings.data_dir.resolve()}: start `smolit up` or set SMOLIT_DATABASE_URL"
            )
        url = state["database_url"]
    try:
        return open_pool(url, 2)
    except DatabaseUnreachable as exc:
        raise SetupError(f"database at {url.split('@')[-1]} is not reachable (SMOLIT_DATABASE_URL): {exc}") from exc
