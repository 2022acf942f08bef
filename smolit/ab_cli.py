"""`smolit ab start|status|stop`: A/B tests of a router model version, or of an agent card variant, against the
champion.

`start` checks the version is in the registry, the share is in (0, 1) and no other test runs, then publishes
`ExperimentStarted` on the router-models topic; every router then routes a hash-chosen `share` of conversations with
the tested version (`contracts.experiments.arm`) and records the arm in `RoutingDecided`. `status` joins those
decisions with the training examples' outcomes (feedback, failures) and compares the arms' positive rates with a
two-sided two-proportion z-test. `stop` logs the result and the decision as an MLflow run, then publishes
`ExperimentStopped`. Nothing is published when a check fails.

Agent tests (`--agent A --variant FILE`): the file's `llm:`/`retrieval:` overrides are applied to the agent's card
and validated (`contracts.apply_variant`); the agents runtime answers the treatment arm's conversations of that agent
with the variant and records the arm in `AnswerProduced`/`TaskFailed`, which `status` joins with the outcomes.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from smolit.contracts import (
    CONTROL,
    TREATMENT,
    AgentCard,
    AnswerProduced,
    Event,
    Experiments,
    ExperimentStarted,
    ExperimentStopped,
    Lifecycle,
    RoutingDecided,
    TaskFailed,
    Topic,
    TopicNames,
    TrainingExample,
    apply_variant,
    challenger_trial,
)
from smolit.infra.settings import Settings, load_settings

from .errors import SetupError
from .services.wiring import open_model_registry

console = Console(stderr=True)
out = Console()
ab_app = typer.Typer(
    no_args_is_help=True, help="A/B tests: a router model version or an agent card variant against the champion."
)
PRODUCER = "cli"
MLFLOW_EXPERIMENT = "smolit-ab"
BETTER, WORSE, UNDECIDED, TOO_FEW = "treatment better", "treatment worse", "no significant difference", "too few"
Alpha = Annotated[float, typer.Option("--alpha", min=0.0001, max=0.5, help="Significance level (two-sided).")]
MinPerArm = Annotated[int, typer.Option("--min-per-arm", min=1, help="Judged outcomes each arm needs to decide.")]


def compare(control: tuple[int, int], treatment: tuple[int, int], alpha: float, min_each: int) -> dict[str, Any]:
    """Per-arm (positives, judged) → counts, rates, z, two-sided p-value and the decision.

    Below `min_each` judged outcomes in either arm the decision is `too few`, whatever the p-value says.
    """
    # Here, not at module level: the learner package imports torch, which every `smolit` command would pay.
    from smolit.learner.rollback import two_proportion_z

    z = two_proportion_z(treatment, control)
    p = 2 * (1 - NormalDist().cdf(abs(z))) if z is not None else 1.0
    if min(control[1], treatment[1]) < min_each:
        decision = TOO_FEW
    elif z is not None and p < alpha:
        decision = BETTER if z > 0 else WORSE
    else:
        decision = UNDECIDED
    results: dict[str, Any] = {}
    for name, (good, judged) in ((CONTROL, control), (TREATMENT, treatment)):
        results[f"{name}_positive"] = good
        results[f"{name}_judged"] = judged
        results[f"{name}_rate"] = round(good / judged, 4) if judged else None
    return results | {"z": round(z, 4) if z is not None else None, "p_value": round(p, 6), "decision": decision}


def outcomes(experiment_id: str, decisions: list[Event], examples: list[Event]) -> dict[str, tuple[int, int]]:
    """(positives, judged) per arm: the test's decisions (router tests) or answers and failures (agent tests) joined
    by request id with judged training examples."""
    arms = {
        e.correlation_id: e.arm
        for e in decisions
        if isinstance(e, RoutingDecided | AnswerProduced | TaskFailed)
        and e.experiment_id == experiment_id
        and e.arm is not None
    }
    counts = {CONTROL: [0, 0], TREATMENT: [0, 0]}
    seen: set[uuid.UUID] = set()
    for e in examples:
        if not isinstance(e, TrainingExample) or e.positive is None or e.correlation_id not in arms:
            continue
        if e.correlation_id in seen:  # a request's first judged outcome counts (redelivery, later feedback)
            continue
        seen.add(e.correlation_id)
        counts[arms[e.correlation_id]][0] += int(e.positive)
        counts[arms[e.correlation_id]][1] += 1
    return {a: (c[0], c[1]) for a, c in counts.items()}


@ab_app.command()
def start(
    router_version: Annotated[
        str | None, typer.Option("--router-version", help="Registry version serving the treatment arm.")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Agent whose conversations are split.")] = None,
    variant: Annotated[
        Path | None, typer.Option("--variant", help="YAML with the agent card's llm:/retrieval: overrides.")
    ] = None,
    share: Annotated[float, typer.Option("--share", help="Fraction of conversations in the treatment arm.")] = 0.2,
    experiment_id: Annotated[str | None, typer.Option("--id", help="Test id (default: a new one).")] = None,
) -> None:
    """Start routing `share` of conversations (chosen by a hash of their id) with a registry version, or answering
    `share` of one agent's conversations with a variant of its card."""
    if (agent is None) != (variant is None):
        raise SetupError("--agent and --variant go together (an agent and its variant file); nothing changed")
    if (router_version is None) == (agent is None):
        raise SetupError(
            "give either --router-version V (see `smolit models versions`) or --agent A --variant FILE; nothing changed"
        )
    if not 0 < share < 1:
        raise SetupError(f"--share must be between 0 and 1 (exclusive), got {share}; nothing changed")
    overrides = _variant_file(variant) if variant is not None else None
    settings = load_settings()
    name = settings.router_registry_name
    if router_version is not None:
        registry = open_model_registry(settings)
        if router_version not in {v.version for v in registry.versions(name)}:
            raise SetupError(f"{name} has no version {router_version} (see `smolit models versions`); nothing changed")
    variant_card = _variant_card(settings, agent, variant, overrides) if agent and variant else None
    state = Experiments.of(_read(settings, Topic.ROUTER_MODELS))
    if (running := state.running) is not None:
        raise SetupError(
            f"A/B test {running.experiment_id} on {_target(running)} is running "
            "(`smolit ab stop` first); nothing changed"
        )
    new_id = experiment_id or f"ab-{uuid.uuid4().hex[:8]}"
    if new_id in state.started:
        raise SetupError(f"A/B test id {new_id} was used before; nothing changed")
    started = ExperimentStarted(
        correlation_id=uuid.uuid4(),
        producer=PRODUCER,
        experiment_id=new_id,
        kind="router" if agent is None else "agent",
        router_version=router_version,
        registry_name=name,
        agent=agent,
        variant=variant_card,
        share=share,
    )
    _publish(settings, started)
    console.print(f"A/B test {new_id}: {share:.0%} of conversations use {_target(started)}")
    out.print(new_id)


def _target(test: ExperimentStarted) -> str:
    """What a test tries, in words (`version 3`, `agent legal variant`)."""
    return f"agent {test.agent} variant" if test.kind == "agent" else f"version {test.router_version}"


def _variant_file(path: Path) -> object:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SetupError(f"variant file {path} cannot be read: {exc.strerror or exc}; nothing changed") from exc
    except yaml.YAMLError as exc:
        raise SetupError(f"variant file {path} is not valid YAML: {exc}; nothing changed") from exc


def _variant_card(settings: Settings, agent: str, path: Path, overrides: object) -> AgentCard:
    """The agent's current card (card files, then the lifecycle log) with the file's overrides, validated."""
    from smolit.infra.cards import load_cards

    state = Lifecycle.of(_read(settings, Topic.AGENT_LIFECYCLE))
    cards = load_cards(settings.agents_dir) | state.champions
    if agent not in cards:
        raise SetupError(f"unknown agent {agent!r}; known: {', '.join(sorted(cards))}; nothing changed")
    if agent in state.retired:
        raise SetupError(f"agent {agent!r} is retired; nothing changed")
    try:
        variant = apply_variant(cards[agent], overrides)
    except ValueError as exc:
        reason = " ".join(str(exc).split())  # pydantic's message spans lines
        raise SetupError(f"variant file {path} for agent {agent}: {reason}; nothing changed") from exc
    # A backend the agents service already serves (for this card or by default) is configured: it checked at start.
    served = {"extractive", cards[agent].llm.backend, cards[agent].llm.fallback_backend, settings.llm_backend}
    backends = {variant.llm.backend, variant.llm.fallback_backend} - served - {None, settings.llm_fallback_backend}
    if backends and not (settings.openai_base_url or settings.openai_api_key):
        raise SetupError(
            f"variant file {path} asks for the openai backend, which is not configured (set SMOLIT_OPENAI_BASE_URL"
            " and/or SMOLIT_OPENAI_API_KEY for the agents service); nothing changed"
        )
    # The next version number, so the variant's answers never count as the champion's (or a challenger's) in the
    # learner's flag rule, which judges each agent on the answers of its current version only.
    newest = max(cards[agent].version, state.cards[agent].version if agent in state.cards else 0)
    return variant.model_copy(update={"version": newest + 1})


@ab_app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    alpha: Alpha = 0.05,
    min_per_arm: MinPerArm = 30,
) -> None:
    """Every A/B test: running or stopped, per-arm outcomes, z-test and decision (stopped: as logged at stop); and
    every learner challenger on trial, compared with its champion the same way."""
    settings = load_settings()
    state = Experiments.of(_read(settings, Topic.ROUTER_MODELS))
    challengers = Lifecycle.of(_read(settings, Topic.AGENT_LIFECYCLE)).challengers
    rows = []
    decisions: list[Event] = []
    examples: list[Event] = []
    if state.running is not None or challengers:
        examples = _read(settings, Topic.TRAINING_EXAMPLES)
    if state.running is not None:
        decisions = _read(settings, _arm_topic(state.running))
    for exp_id, started in state.started.items():
        stopped = state.stopped.get(exp_id)
        if stopped is not None:
            results: dict[str, Any] = dict(stopped.results) | {"decision": stopped.decision}
        else:
            arms = outcomes(exp_id, decisions, examples)
            results = compare(arms[CONTROL], arms[TREATMENT], alpha, min_per_arm)
        rows.append(
            {
                "experiment_id": exp_id,
                "kind": started.kind,
                "router_version": started.router_version,
                "agent": started.agent,
                "share": started.share,
                "status": "stopped" if stopped is not None else "running",
                "tests": _target(started),
            }
            | results
        )
    answers = _read(settings, Topic.ANSWERS) if challengers else []
    for agent, update in challengers.items():
        trial = challenger_trial(agent, update.card.version)
        arms = outcomes(trial, answers, examples)
        rows.append(
            {
                "experiment_id": trial,
                "kind": "challenger",
                "router_version": None,
                "agent": agent,
                "share": update.share,
                "status": "running",
                "tests": f"agent {agent} challenger v{update.card.version}",
            }
            | compare(arms[CONTROL], arms[TREATMENT], alpha, min_per_arm)
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("no A/B tests (start one with `smolit ab start --router-version V`)")
        return
    table = Table("id", "tests", "share", "status", "control", "treatment", "p", "decision")
    for r in rows:
        cells = [f"{r.get(f'{a}_positive', 0):.0f}/{r.get(f'{a}_judged', 0):.0f}" for a in (CONTROL, TREATMENT)]
        table.add_row(
            r["experiment_id"], r["tests"], f"{r['share']:g}", r["status"], *cells, str(r["p_value"]), r["decision"],
        )  # fmt: skip
    out.print(table)


@ab_app.command()
def stop(
    experiment_id: Annotated[str | None, typer.Argument(help="Test to stop (default: the running one).")] = None,
    reason: Annotated[str, typer.Option("--reason")] = "operator",
    alpha: Alpha = 0.05,
    min_per_arm: MinPerArm = 30,
) -> None:
    """Stop the running test: log its results and decision to MLflow, then tell the routers (all back to champion)."""
    settings = load_settings()
    state = Experiments.of(_read(settings, Topic.ROUTER_MODELS))
    running = state.running
    if running is None or (experiment_id is not None and experiment_id != running.experiment_id):
        raise SetupError(f"no running A/B test {experiment_id or ''}".rstrip() + "; nothing changed")
    arms = outcomes(
        running.experiment_id, _read(settings, _arm_topic(running)), _read(settings, Topic.TRAINING_EXAMPLES)
    )
    results = compare(arms[CONTROL], arms[TREATMENT], alpha, min_per_arm)
    decision = results.pop("decision")
    metrics = {k: float(v) for k, v in results.items() if v is not None}
    try:
        run_id = open_model_registry(settings, MLFLOW_EXPERIMENT).log_run(
            {
                "kind": running.kind,
                "target": f"agent:{running.agent}"
                if running.kind == "agent"
                else f"{running.registry_name}/{running.router_version}",
                "share": running.share,
                "alpha": alpha,
                "min_per_arm": min_per_arm,
            },
            metrics,
            tags={"experiment_id": running.experiment_id, "decision": decision, "reason": reason},
            run_name=running.experiment_id,
            texts={"variant.json": running.variant.model_dump_json(indent=2)} if running.variant else None,
        )
    except Exception as exc:
        raise SetupError(f"could not log the A/B test to MLflow ({settings.tracking_uri}): {exc}") from exc
    stopped = ExperimentStopped(
        correlation_id=running.correlation_id,
        producer=PRODUCER,
        experiment_id=running.experiment_id,
        reason=reason,
        decision=decision,
        results=metrics,
    )
    _publish(settings, stopped)
    console.print(f"A/B test {running.experiment_id} stopped: {decision} (MLflow run {run_id})")
    out.print_json(json.dumps(results | {"decision": decision, "mlflow_run_id": run_id}))


def _arm_topic(test: ExperimentStarted) -> Topic:
    """Where a test's arms are recorded: routing decisions for router tests, answers for agent tests."""
    return Topic.ANSWERS if test.kind == "agent" else Topic.DECISIONS


def _profile(settings: Settings) -> Any:
    from smolit.infra.kafka import BrokerUnreachable, KafkaProfile, check_broker

    from .stack import running_bootstrap

    profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
    try:
        check_broker(profile.admin(), timeout_s=5)
    except BrokerUnreachable as exc:
        raise SetupError(f"Kafka broker at {profile.bootstrap} is not reachable: {exc}") from exc
    return profile


def _read(settings: Settings, topic: Topic) -> list[Event]:
    from smolit.infra.kafka import TopicMissing, read_topic_events

    try:
        return read_topic_events(_profile(settings).consumer("ab-cli"), TopicNames(settings.topic_prefix)(topic))
    except TopicMissing:
        return []


def _publish(settings: Settings, event: Event) -> None:
    from smolit.infra.kafka import EventProducer, Outgoing, ProduceError

    producer = EventProducer(_profile(settings).producer(), TopicNames(settings.topic_prefix))
    try:
        producer.send(Outgoing(Topic.ROUTER_MODELS, "router", event))
        producer.flush(10)
    except ProduceError as exc:
        raise SetupError(f"could not publish {event.type}: {exc}") from exc  # type: ignore[attr-defined]
    finally:
        producer.close()
