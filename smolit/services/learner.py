"""The learner process: trains the router from examples, flags agents, proposes agents for new domains."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Literal, cast

from smolit.contracts import Topic
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
from smolit.infra.kafka import EventProducer
from smolit.infra.settings import Settings

from ..errors import SetupError
from .registry_snapshot import SnapshotRegistry
from .wiring import Deferred, SerialEmbedder, Wiring, lifecycle_loop, log, replay_lifecycle, run_consumers

if TYPE_CHECKING:
    from smolit.infra.registry import ModelRegistry
    from smolit.learner import Learner


def run_learner(w: Wiring, stop: threading.Event) -> None:
    s = w.settings
    # The consumer groups are joined first (~3 s on the embedded broker), while torch and the models load: a
    # restarted learner is back after the longer of the two, not both.
    examples, flags_in, agents_in = Deferred(), Deferred(), Deferred()
    loops = [
        w.loop("learner", [Topic.TRAINING_EXAMPLES], examples),
        w.loop("learner-flags", [Topic.TRAINING_EXAMPLES, Topic.AGENT_LIFECYCLE], flags_in),
        lifecycle_loop(w, "learner", agents_in),
    ]
    models_in = Deferred()
    if s.model_monitor:
        model_topics = [Topic.MODEL_OUTCOMES, Topic.ANSWERS, Topic.FEEDBACK, Topic.ROUTER_MODELS]
        loops.append(w.loop("learner-models", model_topics, models_in))
    decisions_in, proposals_in, outcomes_in = Deferred(), Deferred(), Deferred()
    if s.discovery != "off":
        loops += [w.loop("proposer", [Topic.DECISIONS], decisions_in), lifecycle_loop(w, "proposer", proposals_in)]
        if s.discovery_feedback:  # its own group: it commits the feedback stream apart from the decisions
            loops.append(w.loop("proposer-outcomes", [Topic.TRAINING_EXAMPLES], outcomes_in))
    started = [loop.start_thread() for loop in loops]

    import torch

    from smolit.infra.embedder import build_embedder
    from smolit.infra.registry import open_registry
    from smolit.learner import Learner, LearnerConfig, LearnerMetrics
    from smolit.router.features import AgentFeatures

    torch.set_num_threads(s.threads)
    embedder = SerialEmbedder(build_embedder(s))  # two lifecycle loops embed cards, each in its own thread
    learner = Learner(
        AgentFeatures.from_cards(load_cards(s.agents_dir), embedder),
        # MLflow opens at the first candidate, not at start (see registry_snapshot); same methods, duck-typed.
        cast(
            "ModelRegistry",
            SnapshotRegistry(
                lambda: open_registry(s.tracking_uri, s.data_dir),
                s.data_dir / "learner" / "registry-snapshot.pt",
                key=f"{s.tracking_uri}#{s.router_registry_name}",
                name=s.router_registry_name,
            ),
        ),
        LearnerMetrics.create(w.registry),
        LearnerConfig(
            registry_name=s.router_registry_name,
            train_every=s.learner_train_every,
            train_every_s=s.learner_train_every_s,
            steps_per_example=s.learner_steps_per_example,
            hidden=s.learner_hidden,
            refit_iterations=s.learner_refit_iterations,
            refit_window=s.learner_refit_window,
            refit_l2=s.learner_refit_l2,
            holdout_share=s.learner_holdout_share,
            holdout_size=s.learner_holdout_size,
            holdout_rounds=s.learner_holdout_rounds,
            min_holdout=s.learner_min_holdout,
            fresh_gate=s.learner_fresh_gate,
            promotion_margin=s.learner_promotion_margin,
            target_precision=s.learner_target_precision,
            min_confidence=s.learner_min_confidence,
            seed=s.learner_seed,
            rollback_min_outcomes=s.learner_rollback_min_outcomes,
            rollback_alpha=s.learner_rollback_alpha,
        ),
    )
    examples.set(learner.handle)
    flags_in.set(flag_monitor(w).handle)
    if s.model_monitor:
        models_in.set(model_monitor(w).handle)
    timer = threading.Thread(target=tick_learner, args=(learner, w.producer, stop), name="learner-timer", daemon=True)
    timer.start()
    # Agents created at runtime: the learner trains on their outcomes too.
    catalog = CardCatalog(
        load_cards(s.agents_dir), lambda cards, _: learner.use_agents(AgentFeatures.from_cards(cards, embedder))
    )
    replay_lifecycle(w, catalog.handle)
    agents_in.set(catalog.handle)
    if s.discovery != "off":
        proposer = build_proposer(w, embedder, s.discovery)
        replay_lifecycle(w, proposer.handle_lifecycle)
        decisions_in.set(proposer.handle_decisions)
        proposals_in.set(proposer.handle_lifecycle)
        outcomes_in.set(proposer.handle_outcomes)
    # Building the optimizer imports torch._dynamo (2-8 s): aside, while the consumer groups are joined.
    threading.Thread(target=learner.warm_up, name="learner-warm-up", daemon=True).start()
    run_consumers(w, "learner", loops, stop, s.learner_metrics_port, started=started)


def model_monitor(w: Wiring) -> Any:
    """Pipeline models (OCR, sentiment) whose live outcomes drop are rolled back: validation outcomes and feedback on
    the answers they served in, `RolledBack` out on the router-models topic (model managers swap back)."""
    from smolit.infra.kafka import TopicMissing, read_topic_events
    from smolit.learner import ModelMonitor, ModelMonitorConfig, ModelMonitorMetrics

    from .wiring import open_model_registry

    s = w.settings
    monitor = ModelMonitor(
        lambda: open_model_registry(s, "smolit-models"),
        ModelMonitorConfig(
            min_outcomes=s.model_rollback_min_outcomes,
            alpha=s.model_rollback_alpha,
            ignore=frozenset({s.router_registry_name}),  # the router's own rollback rule judges it
        ),
        ModelMonitorMetrics.create(w.registry),
    )
    # The group resumes after its committed offset: who is champion comes from a full read of the topic.
    with contextlib.suppress(TopicMissing):
        monitor.prime(read_topic_events(w.profile.consumer("learner-models"), w.topics(Topic.ROUTER_MODELS)))
    return monitor


def build_proposer(w: Wiring, embedder: Any, mode: Literal["approve", "auto"]) -> Any:
    """New domains -> new agents: unserved requests (low-confidence, or rated bad) clustered, proposals (or agents,
    in auto mode) out."""
    from smolit.infra.knowledge import KnowledgeStore
    from smolit.learner import AgentProposer, Discovery, ProposerMetrics

    s = w.settings
    store = KnowledgeStore(w.pool, s.hnsw_ef_search)
    return AgentProposer(
        Discovery(discovery_config(s)),
        load_cards(s.agents_dir),
        embedder,
        ProposerMetrics.create(w.registry),
        mode=mode,
        knowledge=lambda c: store.pool_sources(c, s.discovery_knowledge_min_score, s.discovery_knowledge_max),
        namer=proposal_namer(s),
    )


def proposal_namer(s: Settings) -> Any:
    """The LLM that names proposed agents (`SMOLIT_DISCOVERY_NAMING`), or None for the cluster's top terms."""
    from smolit.infra.llm import OpenAILLM
    from smolit.learner import LLMNamer

    configured = bool(s.openai_base_url or s.openai_api_key)
    if s.discovery_naming == "terms" or (s.discovery_naming == "auto" and not configured):
        return None
    if not configured:
        raise SetupError(
            "SMOLIT_DISCOVERY_NAMING=llm needs an OpenAI-compatible endpoint: set SMOLIT_OPENAI_BASE_URL or "
            "SMOLIT_OPENAI_API_KEY (or use SMOLIT_DISCOVERY_NAMING=terms)"
        )
    key = s.openai_api_key.get_secret_value() if s.openai_api_key else None
    return LLMNamer(OpenAILLM(s.openai_base_url, key, s.openai_model, s.llm_timeout_s, s.llm_max_retries))


def discovery_config(settings: Settings) -> Any:
    from smolit.learner import DiscoveryConfig

    return DiscoveryConfig(
        window=settings.discovery_window,
        min_size=settings.discovery_min_size,
        min_cohesion=settings.discovery_min_cohesion,
        clone_similarity=settings.discovery_clone_similarity,
        duplicate_similarity=settings.discovery_duplicate_similarity,
    )


def flag_monitor(w: Wiring) -> Any:
    """The learner's flag rule over every agent but the fallback, primed with the lifecycle log's flags."""
    from smolit.infra.kafka import TopicMissing, read_topic_events
    from smolit.infra.registry import open_registry
    from smolit.learner import FlagMetrics, FlagMonitor, FlagRule, MlflowAgentVersions, MonitorConfig
    from smolit.learner.improvement import AGENT_EXPERIMENT

    s = w.settings
    try:
        rule = FlagRule(
            min_samples=s.flag_min_samples,
            window=s.flag_window,
            flag_rate=s.flag_rate,
            unflag_rate=s.unflag_rate,
            margin=s.flag_margin,
            z=s.flag_z,
        )
    except ValueError as exc:
        raise SetupError(f"flag settings (SMOLIT_FLAG_*, SMOLIT_UNFLAG_RATE): {exc}") from exc
    monitor = FlagMonitor(
        load_cards(s.agents_dir),
        MonitorConfig(
            rule=rule,
            exempt=frozenset({s.fallback_agent}),
            default_top_k=s.retrieval_top_k,
            retire_rate=s.flag_retire_rate,
            challenger_share=s.challenger_share if s.challenger_share < 1 else None,
        ),
        FlagMetrics.create(w.registry),
        MlflowAgentVersions(  # opened at the first recorded card version, not at start
            cast(
                "ModelRegistry",
                SnapshotRegistry(lambda: open_registry(s.tracking_uri, s.data_dir, AGENT_EXPERIMENT), None),
            )
        ),
    )
    # The consumer group resumes after its committed offset: earlier flags come from a full read of the topic.
    with contextlib.suppress(TopicMissing):
        monitor.prime(read_topic_events(w.profile.consumer("learner-flags"), w.topics(Topic.AGENT_LIFECYCLE)))
    return monitor


def tick_learner(learner: Learner, producer: EventProducer, stop: threading.Event) -> None:
    """Time-based candidates (few examples arrived): published here since no consumed batch carries them."""
    while not stop.wait(1.0):
        try:
            outgoing = learner.tick()
        except Exception:
            log.exception("learner timer failed; the next batch retries")
            continue
        for out in outgoing:
            producer.send(out)
        if outgoing:
            producer.flush()
