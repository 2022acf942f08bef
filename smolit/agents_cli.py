"""`smolit agents [list] | unflag | retire | rollback | proposals | approve`: the catalogue, the operator's say.

The list joins the card folder (plus agents created on the log), the knowledge base's counts and the
agent-lifecycle topic (flags with their evidence, retirements). `unflag` and `retire` publish `AgentUnflagged` /
`AgentRetired` with reason `operator` on that topic, after checking that the change makes sense: the fallback agent
cannot be retired, unknown agents are refused, and nothing is published when the check fails. `proposals` and
`approve` show and accept the agents the learner proposed for new domains (`AgentProposed`; an approval is the
`AgentCreated` that names the proposal).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from smolit.contracts import (
    AgentCard,
    AgentCreated,
    AgentRetired,
    AgentUnflagged,
    AgentUpdated,
    Event,
    Lifecycle,
    Topic,
    TopicNames,
)
from smolit.infra.settings import Settings, load_settings

from .errors import SetupError

console = Console(stderr=True)
out = Console()
agents_app = typer.Typer(help="Agents: list (flags, evidence); unflag, retire, roll back; proposals, approve.")
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (setting SMOLIT_DATA_DIR).")]
PRODUCER = "cli"


@agents_app.callback(invoke_without_command=True)
def agents(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """List agents with their knowledge counts, card version, flag (with its evidence) or retirement."""
    if ctx.invoked_subcommand is not None:
        return
    from smolit.infra.cards import load_cards
    from smolit.infra.db import DatabaseUnreachable, open_pool
    from smolit.infra.knowledge import KnowledgeStore

    from .stack import running_database_url

    settings = load_settings(data_dir=data_dir)
    cards: dict[str, AgentCard] = load_cards(settings.agents_dir)
    try:
        state: Lifecycle | None = _read_lifecycle(settings)
    except SetupError as exc:
        console.print(f"[yellow]flags unknown:[/] {exc}")
        state = None
    if state is not None:
        cards |= state.cards  # created or updated on the log: the latest card version
    url = running_database_url(settings)
    try:
        pool = open_pool(url, 2)
    except DatabaseUnreachable as exc:
        raise SetupError(f"database at {url.split('@')[-1]} is not reachable (SMOLIT_DATABASE_URL): {exc}") from exc
    with pool:
        stats = {s.collection: s for s in KnowledgeStore(pool).stats()}
    rows = [_row(card, stats.get(card.knowledge_collection), state) for _, card in sorted(cards.items())]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("agent", "domain", "v", "documents", "chunks", "status", "description")
    for r in rows:
        status = {"flagged": "[yellow]⚑ flagged[/]", "retired": "[red]retired[/]"}.get(r["status"], r["status"] or "?")
        table.add_row(
            r["agent"],
            r["domain"],
            str(r["version"]),
            str(r["documents"]),
            str(r["chunks"]),
            status,
            r["description"][:60],
        )
    out.print(table)
    for r in rows:
        if r["flag"]:
            flag = r["flag"]
            actions = ", ".join(flag["proposed_actions"]) or "none"
            out.print(f"[yellow]⚑ {r['agent']}[/] (v{flag['card_version']}): {flag['reason']}; proposed: {actions}")
            out.print("   " + ", ".join(f"{k}={v:g}" for k, v in flag["evidence"].items()))
        if r["retired"]:
            out.print(f"[red]retired {r['agent']}[/]: {r['retired']['reason']}")
        if r["challenger"]:
            trial = r["challenger"]
            out.print(f"↳ {r['agent']}: challenger v{trial['version']} answers {trial['share']:.0%} of conversations")


def _row(card: AgentCard, stats: Any, state: Lifecycle | None) -> dict[str, Any]:
    flag = state.flags.get(card.name) if state else None
    retired = state.retired.get(card.name) if state else None
    trial = state.challengers.get(card.name) if state else None
    status = None if state is None else "retired" if retired else "flagged" if flag else "active"
    return {
        "agent": card.name,
        "domain": card.domain or card.name,
        "documents": stats.documents if stats else 0,
        "chunks": stats.chunks if stats else 0,
        "description": card.description,
        "version": card.version,
        "status": status,
        "flag": None
        if flag is None
        else {
            "reason": flag.reason,
            "rule": flag.rule,
            "card_version": flag.card_version,
            "proposed_actions": list(flag.proposed_actions),
            "evidence": flag.evidence,
            "flagged_at": flag.occurred_at.isoformat(),
        },
        "retired": None if retired is None else {"reason": retired.reason, "at": retired.occurred_at.isoformat()},
        # A learner challenger sharing the agent's traffic (`version` above is its version, being judged).
        "challenger": None if trial is None else {"version": trial.card.version, "share": trial.share},
    }


@agents_app.command("unflag")
def unflag(
    name: Annotated[str, typer.Argument(help="Agent to unflag.")],
    data_dir: DataDir = None,
) -> None:
    """Clear an agent's flag (AgentUnflagged, reason `operator`): the router stops demoting it."""
    settings = load_settings(data_dir=data_dir)
    state = _read_lifecycle(settings)
    _require_known(settings, state, name)
    if name not in state.flags:
        raise SetupError(f"agent {name!r} is not flagged; nothing changed")
    _publish(settings, AgentUnflagged(correlation_id=uuid.uuid4(), producer=PRODUCER, agent=name, reason="operator"))
    typer.echo(f"agent {name} unflagged")


@agents_app.command("retire")
def retire(
    name: Annotated[str, typer.Argument(help="Agent to retire.")],
    data_dir: DataDir = None,
) -> None:
    """Retire an agent (AgentRetired, reason `operator`): routers never send it requests again."""
    settings = load_settings(data_dir=data_dir)
    if name == settings.fallback_agent:
        raise SetupError(
            f"agent {name!r} is the fallback agent (SMOLIT_FALLBACK_AGENT) and answers every request no other agent"
            " is confident about; it cannot be retired; nothing changed"
        )
    state = _read_lifecycle(settings)
    _require_known(settings, state, name)
    if name in state.retired:
        raise SetupError(f"agent {name!r} is already retired; nothing changed")
    _publish(settings, AgentRetired(correlation_id=uuid.uuid4(), producer=PRODUCER, agent=name, reason="operator"))
    typer.echo(f"agent {name} retired")


@agents_app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="Agent whose card goes back.")],
    to: Annotated[int, typer.Option("--to", min=1, help="Card version to restore (an MLflow run of `smolit-agents`).")],
    data_dir: DataDir = None,
) -> None:
    """Announce an earlier card version again (AgentUpdated with the next version number, recorded in MLflow)."""
    from smolit.infra.registry import open_registry
    from smolit.learner.improvement import AGENT_EXPERIMENT, MlflowAgentVersions

    settings = load_settings(data_dir=data_dir)
    state = _read_lifecycle(settings)
    _require_known(settings, state, name)
    if name in state.retired:
        raise SetupError(f"agent {name!r} is retired; nothing changed")
    versions = MlflowAgentVersions(open_registry(settings.tracking_uri, settings.data_dir, AGENT_EXPERIMENT))
    old = versions.card(name, to)
    if old is None:
        raise SetupError(
            f"agent {name!r} has no recorded version {to} (MLflow experiment smolit-agents); nothing changed"
        )
    from smolit.infra.cards import load_cards

    current = state.cards.get(name) or load_cards(settings.agents_dir)[name]
    card = old.model_copy(update={"version": current.version + 1})
    _publish(settings, AgentUpdated(correlation_id=uuid.uuid4(), producer=PRODUCER, card=card))
    versions.record(card, reason=f"rollback to version {to}", metrics={})
    typer.echo(f"agent {name}: version {card.version} = the card of version {to} (was version {current.version})")


def _require_known(settings: Settings, state: Lifecycle, name: str) -> None:
    from smolit.infra.cards import load_cards

    known = set(load_cards(settings.agents_dir)) | set(state.cards)
    if name not in known:
        raise SetupError(f"unknown agent {name!r}; known: {', '.join(sorted(known))}; nothing changed")


def _profile(settings: Settings) -> tuple[Any, TopicNames]:
    from smolit.infra.kafka import BrokerUnreachable, KafkaProfile, check_broker

    from .stack import running_bootstrap

    profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
    try:
        check_broker(profile.admin(), timeout_s=5)
    except BrokerUnreachable as exc:
        raise SetupError(f"Kafka broker at {profile.bootstrap} is not reachable: {exc}") from exc
    return profile, TopicNames(settings.topic_prefix)


def _read_lifecycle(settings: Settings) -> Lifecycle:
    from smolit.infra.kafka import TopicMissing, read_topic_events

    profile, topics = _profile(settings)
    try:
        events = read_topic_events(profile.consumer("agents-cli"), topics(Topic.AGENT_LIFECYCLE))
    except TopicMissing:
        events = []
    return Lifecycle.of(events)


def _publish(settings: Settings, event: Event) -> None:
    from smolit.infra.kafka import EventProducer, Outgoing, ProduceError

    profile, topics = _profile(settings)
    producer = EventProducer(profile.producer(), topics)
    try:
        key = event.card.name if isinstance(event, AgentUpdated) else event.agent  # type: ignore[attr-defined]
        producer.send(Outgoing(Topic.AGENT_LIFECYCLE, key, event))
        producer.flush(10)
    except ProduceError as exc:
        raise SetupError(f"could not publish {event.type}: {exc}") from exc  # type: ignore[attr-defined]
    finally:
        producer.close()


def _lifecycle(settings: Settings) -> list[Event]:
    from smolit.infra.kafka import KafkaProfile
    from smolit.infra.kafka.reader import TopicMissing, read_topic_events

    from .stack import running_bootstrap

    profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
    topic = TopicNames(settings.topic_prefix)(Topic.AGENT_LIFECYCLE)
    try:
        return read_topic_events(profile.consumer("agents-cli"), topic)
    except TopicMissing:
        return []
    except Exception as exc:  # confluent-kafka: broker down or unknown
        raise SetupError(f"could not read {topic} from the broker (SMOLIT_KAFKA_BOOTSTRAP): {exc}") from exc


def runtime_cards(settings: Settings) -> dict[str, AgentCard]:
    """Agents created or updated at runtime (newest card per name), or none when no running system is found."""
    try:
        events = _lifecycle(settings)
    except SetupError:
        return {}
    return {e.card.name: e.card for e in events if isinstance(e, AgentCreated | AgentUpdated)}


@agents_app.command("proposals")
def proposals(
    show_all: Annotated[bool, typer.Option("--all", help="Also list proposals already approved.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List agents the learner proposed for new domains found among low-confidence requests."""
    from smolit.learner.approval import proposal_states

    states = [s for s in proposal_states(_lifecycle(load_settings())) if show_all or s.status == "pending"]
    rows = [
        {
            "id": s.proposal.proposal_id,
            "status": s.status,
            "agent": s.proposal.card.name,
            "description": s.proposal.card.description,
            "requests": s.proposal.size,
            "cohesion": s.proposal.cohesion,
            "terms": list(s.proposal.terms),
            "examples": list(s.proposal.card.examples),
            "knowledge": list(s.proposal.knowledge),
            "nearest_agent": s.proposal.nearest_agent,
            "nearest_similarity": s.proposal.nearest_similarity,
            "proposed_at": s.proposal.occurred_at.isoformat(),
        }
        for s in states
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no pending proposals" if not show_all else "no proposals")
        return
    table = Table("id", "status", "agent", "requests", "cohesion", "pool docs", "nearest agent", "example")
    for r in rows:
        nearest = f"{r['nearest_agent']} ({r['nearest_similarity']:.2f})" if r["nearest_agent"] else "-"
        example = r["examples"][0][:60] if r["examples"] else ""
        table.add_row(
            r["id"],
            r["status"],
            r["agent"],
            str(r["requests"]),
            f"{r['cohesion']:.2f}",
            str(len(r["knowledge"])),
            nearest,
            example,
        )
    out.print(table)


@agents_app.command("approve")
def approve(
    proposal_id: Annotated[str, typer.Argument(help="Proposal id (see `smolit agents proposals`).")],
    name: Annotated[str | None, typer.Option(help="Create the agent under this name instead.")] = None,
) -> None:
    """Create the proposed agent: routers, agents and the gateway take it up at once."""
    from smolit.infra.cards import load_cards
    from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing, ProduceError
    from smolit.learner.approval import ProposalError
    from smolit.learner.approval import approve as approval

    from .stack import running_bootstrap

    settings = load_settings()
    events = _lifecycle(settings)
    existing = set(load_cards(settings.agents_dir))
    existing |= {e.card.name for e in events if isinstance(e, AgentCreated | AgentUpdated)}
    try:
        created = approval(proposal_id, events, existing, name)
    except ProposalError as exc:
        raise SetupError(str(exc)) from exc
    profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
    producer = EventProducer(profile.producer(), TopicNames(settings.topic_prefix))
    try:
        producer.send(Outgoing(Topic.AGENT_LIFECYCLE, created.card.name, created))
        producer.flush(10)
    except ProduceError as exc:
        raise SetupError(f"the broker did not take the AgentCreated event: {exc}") from exc
    finally:
        producer.close()
    out.print(f"agent {created.card.name!r} created from proposal {proposal_id}")
