"""Client commands against a running system: `smolit ask`, `smolit feedback`, `smolit stats`."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from smolit.infra.settings import Settings, load_settings

from .errors import SetupError
from .stack import read_state, running_bootstrap

console = Console(stderr=True)
out = Console()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (setting SMOLIT_DATA_DIR).")]


def ask(
    text: Annotated[str, typer.Argument(help="Your question.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    agent: Annotated[str | None, typer.Option(help="Ask this agent directly.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id.")] = None,
    url: Annotated[str | None, typer.Option(help="Gateway URL (default: the running `smolit up`).")] = None,
    data_dir: DataDir = None,
    attach: Annotated[
        list[Path] | None,
        typer.Option("--attach", help="Image sent with the question (png, jpg, tif, bmp); repeatable."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="STEP=MODEL: ask the agent to use this internal model (e.g. ocr=smolit-ocr)."),
    ] = None,
) -> None:
    """Ask the running system a question."""
    settings = load_settings(data_dir=data_dir)
    base = url or gateway_url(settings)
    body: dict[str, object] = {"text": text, "agent": agent, "conversation_id": conversation}
    if attach:
        body["attachments"] = [_attachment(path) for path in attach]
    if model:
        if bad := [m for m in model if "=" not in m]:
            raise SetupError(f"--model takes STEP=MODEL (e.g. ocr=smolit-ocr-upscale), not {bad[0]!r}")
        body["models"] = dict(m.split("=", 1) for m in model)
    try:
        response = httpx.post(
            f"{base}/v1/requests", json=body, headers=auth_headers(settings), timeout=settings.request_timeout_s + 10
        )
    except httpx.HTTPError as exc:
        raise SetupError(f"gateway at {base} is not reachable ({exc}); is `smolit up` running?") from exc
    result = response.json()
    if as_json:
        out.print_json(json.dumps(result))
    elif response.status_code != 200:
        console.print(f"[red]{response.status_code}[/] {result.get('detail', result)}")
    else:
        print_answer(result)
    if response.status_code != 200:
        raise typer.Exit(1)


_MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".bmp": "image/bmp",
}


def _attachment(path: Path) -> dict[str, str]:
    """An image file as a request attachment (base64); the gateway checks count and size."""
    media_type = _MEDIA_TYPES.get(path.suffix.lower())
    if media_type is None:
        raise SetupError(f"{path}: attachments are images ({', '.join(sorted(_MEDIA_TYPES))})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from exc
    return {"name": path.name, "media_type": media_type, "data": base64.b64encode(data).decode()}


def feedback(
    request_id: Annotated[str, typer.Argument(help="The request id `smolit ask` printed.")],
    good: Annotated[
        bool | None, typer.Option("--good/--bad", help="Thumbs up or down (rating +1 / -1).", show_default=False)
    ] = None,
    rating: Annotated[int | None, typer.Option(min=1, max=5, help="Stars, 1–5 (instead of --good/--bad).")] = None,
    comment: Annotated[str | None, typer.Option(help="Free text kept with the feedback.")] = None,
    preferred_agent: Annotated[
        str | None, typer.Option("--agent", help="Corrective feedback: the agent that should have answered.")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Who rates; feedback counts once per user and request.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    url: Annotated[str | None, typer.Option(help="Gateway URL (default: the running `smolit up`).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Rate an answer: --good/--bad, --rating 1–5, or only --comment (the gateway infers thumbs up/down from it
    with the sentiment model, or refuses when unsure)."""
    if good is not None and rating is not None:
        raise typer.BadParameter("give one of --good, --bad or --rating N")
    if good is None and rating is None and not (comment or "").strip():
        raise typer.BadParameter("give --good, --bad, --rating N, or a --comment to infer the rating from")
    settings = load_settings(data_dir=data_dir)
    base = url or gateway_url(settings)
    body: dict[str, Any] = {
        "request_id": request_id,
        "comment": comment,
        "user": user,
        "preferred_agent": preferred_agent,
    }
    if good is not None:
        body |= {"rating": 1 if good else -1, "scale": "thumbs"}
    elif rating is not None:
        body |= {"rating": rating, "scale": "stars"}
    try:
        response = httpx.post(f"{base}/v1/feedback", json=body, headers=auth_headers(settings), timeout=30)
    except httpx.HTTPError as exc:
        raise SetupError(f"gateway at {base} is not reachable ({exc}); is `smolit up` running?") from exc
    result = response.json()
    if as_json:
        out.print_json(json.dumps(result))
    elif response.status_code >= 300:
        console.print(f"[red]{response.status_code}[/] {result.get('detail', result)}")
    elif result.get("duplicate"):
        out.print(f"already rated: request {request_id} has feedback {result['feedback_id']} from this user")
    else:
        out.print(f"thanks: {result['sentiment']} feedback {result['feedback_id']} for {result.get('agent') or '?'}")
        if inferred := result.get("inferred"):
            out.print(
                f"rating inferred from the comment by {inferred['model']} v{inferred['version']}"
                f" (confidence {inferred['confidence']:.2f})"
            )
    if response.status_code >= 300:
        raise typer.Exit(1)


def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of rows.")] = False,
    since: Annotated[
        str | None, typer.Option(help="Only windows from this time on: 30m, 2h, 1d or an ISO time (default: all).")
    ] = None,
    window: Annotated[str | None, typer.Option(help="Only this window length, e.g. 1m or 1h.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Live per-agent table: the latest metrics window per agent and window length (agent-metrics topic)."""
    from smolit.contracts import TopicNames
    from smolit.infra.kafka import BrokerUnreachable, KafkaProfile, TopicMissing, check_broker

    from .stats import collect_stats, flag_notes, parse_since, stats_table

    settings = load_settings(data_dir=data_dir)
    try:
        start = parse_since(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
    try:
        check_broker(profile.admin(), timeout_s=5)
        rows = collect_stats(profile, TopicNames(settings.topic_prefix), start)
    except (BrokerUnreachable, TopicMissing) as exc:
        raise SetupError(f"cannot read agent metrics from {profile.bootstrap}: {exc}") from exc
    rows = [r for r in rows if window is None or r["window"] == window]
    if as_json:
        out.print_json(json.dumps(rows))
    elif not rows:
        out.print("no agent metrics yet (the stream processors publish a window per agent as requests flow)")
    else:
        out.print(stats_table(rows))
        for note in flag_notes(rows):
            out.print(f"[yellow]{note}[/]")


def print_answer(result: dict[str, Any]) -> None:
    score = result.get("score")
    header = f"[bold]{result['agent']}[/] (score {score:.3f})" if score is not None else f"[bold]{result['agent']}[/]"
    if result.get("low_confidence"):
        header += " [yellow]low confidence[/]"
    out.print(header)
    out.print(result.get("answer") or f"[red]failed:[/] {result.get('error')}")
    for i, src in enumerate(result.get("sources", []), start=1):
        out.print(f"  [{i}] {src.get('title') or ''} — {src['source']} (similarity {src['score']:.3f})")
    for use in result.get("models", []):
        outcome = f"[red]{use['error']}[/]" if use.get("error") else f"{use.get('seconds', 0):.2f} s"
        why = f", {use['selected_by']}" if use.get("selected_by") else ""
        out.print(f"  {use['step']}: {use['name']} v{use['version']} read {use.get('input') or '-'} ({outcome}{why})")
        if use.get("hint_ignored"):
            out.print(f"    [yellow]{use['hint_ignored']}[/]")
    out.print(
        f"[dim]request {result['request_id']} · conversation {result['conversation_id']}"
        f" · {result['latency_ms']:.0f} ms[/]"
    )


def gateway_url(settings: Settings) -> str:
    state = read_state(settings.data_dir)
    return state["gateway_url"] if state else f"http://{settings.host}:{settings.port}"


def auth_headers(settings: Settings) -> dict[str, str]:
    """`Authorization: Bearer` from SMOLIT_API_KEY, when set."""
    return {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"} if settings.api_key else {}
