"""`smolit agents proposals|approve`: new agents the learner proposed for new domains, and their approval.

Proposals live in the agent-lifecycle topic (`AgentProposed`); an approval is the `AgentCreated` that names the
proposal. Both commands read the topic from its start (it holds one event per agent change, so it stays small).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from smolit.contracts import AgentCard, AgentCreated, AgentUpdated, Event, Topic, TopicNames
from smolit.infra.settings import Settings, load_settings

from .errors import SetupError

out = Console()
console = Console(stderr=True)


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


def register(agents_app: typer.Typer) -> None:
    """Add `proposals` and `approve` to the `smolit agents` command group."""
    agents_app.command("proposals")(proposals)
    agents_app.command("approve")(approve)
