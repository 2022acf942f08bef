"""`smolit replay` / `smolit train --from-log`: rebuild the training set from the event log and retrain from scratch.

Reads decisions, answers and feedback (not the training-examples topic: the log of facts is the source of truth),
joins them by request id with the same pure join the stream worker uses, and trains a fresh network. Events are
ordered by (event time, event id) first, so the same log always gives the same examples and, seeded, the same
model and metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from smolit.contracts import (
    AnswerProduced,
    Event,
    FeedbackGiven,
    RoutingDecided,
    TaskFailed,
    Topic,
    TopicNames,
    TrainingExample,
)
from smolit.infra.kafka import KafkaProfile
from smolit.infra.kafka.reader import read_topic_events
from smolit.streams.join import JoinEntry

LOG_TOPICS = (Topic.DECISIONS, Topic.ANSWERS, Topic.FEEDBACK)


@dataclass
class ReplayCounts:
    events: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    examples: int = 0
    labelled: int = 0
    """Examples whose outcome says something about the chosen agent (rated, failed or corrected)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": dict(sorted(self.events.items())),
            "requests": self.requests,
            "examples": self.examples,
            "labelled": self.labelled,
        }


def read_log(
    profile: KafkaProfile,
    topics: TopicNames,
    since: datetime | None = None,
    on_topic: Callable[[str, int], None] = lambda *_: None,
) -> list[Event]:
    events: list[Event] = []
    for topic in LOG_TOPICS:
        found = read_topic_events(profile.consumer(f"replay-{topic.value}"), topics(topic), since, timeout_s=600)
        on_topic(topic.value, len(found))
        events += found
    return events


def rebuild_examples(events: Iterable[Event]) -> tuple[list[TrainingExample], ReplayCounts]:
    """Join the log into training examples; requests with no decision in the log are left out."""
    counts = ReplayCounts()
    entries: dict[str, JoinEntry] = {}
    seen: set[str] = set()
    for event in sorted(events, key=lambda e: (e.occurred_at, str(e.event_id))):
        if not isinstance(event, RoutingDecided | AnswerProduced | TaskFailed | FeedbackGiven):
            continue
        if str(event.event_id) in seen:  # at-least-once delivery: the same fact twice counts once
            continue
        seen.add(str(event.event_id))
        counts.events[event.type] += 1
        key = str(event.correlation_id)
        entry = entries.setdefault(key, JoinEntry(key, 0, event.occurred_at.timestamp()))
        entry.apply(event)
    examples = []
    for entry in entries.values():
        if entry.decision is None:
            continue
        if entry.outcome is None:
            entry.outcome = {"failed": "timeout: no answer in the log"}
        examples.append(entry.example())
    examples.sort(key=lambda e: (e.occurred_at, str(e.event_id)))
    counts.requests = len(entries)
    counts.examples = len(examples)
    counts.labelled = sum(1 for e in examples if e.failed or e.positive is not None or e.preferred_agent)
    return examples, counts


def retrain(
    settings: Any,
    since: datetime | None,
    *,
    dry_run: bool,
    hpo_trials: int = 0,
    promote: bool = False,
    on_step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Replay the log into examples, train a fresh network (optionally after a search), register it."""
    import uuid

    from smolit.contracts import RouterModelPromoted
    from smolit.infra.cards import load_cards
    from smolit.infra.embedder import build_embedder
    from smolit.infra.kafka import EventProducer, Outgoing
    from smolit.infra.registry import CHALLENGER, CHAMPION, PREVIOUS, open_registry
    from smolit.learner.offline import TrainParams, params_dict, search, split, train_offline
    from smolit.router.features import AgentFeatures
    from smolit.router.model import export

    from .stack import running_bootstrap

    profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
    topics = TopicNames(settings.topic_prefix)
    on_step("reading decisions, answers and feedback")
    examples, counts = rebuild_examples(read_log(profile, topics, since, lambda t, n: on_step(f"read {n} from {t}")))
    report: dict[str, Any] = {"since": since.isoformat() if since else None, **counts.as_dict()}
    if dry_run:
        return report
    on_step(f"training from {counts.examples} examples")
    import torch

    torch.set_num_threads(settings.threads)
    features = AgentFeatures.from_cards(load_cards(settings.agents_dir), build_embedder(settings))
    train, holdout = split(examples, settings.learner_holdout_share, settings.learner_seed)
    registry = open_registry(settings.tracking_uri, settings.data_dir)
    name = settings.router_registry_name
    parent = registry.start_run("replay" if hpo_trials == 0 else f"replay-hpo-{hpo_trials}", {"source": "replay"})
    try:
        if hpo_trials > 0:

            def log_trial(number: int, result: Any) -> None:
                on_step(f"trial {number}: accuracy {result.evaluation.accuracy}")
                registry.log_run(
                    params_dict(result.params),
                    result.evaluation.as_metrics() | {"train_time_s": result.train_s},
                    run_name=f"trial-{number}",
                    parent_run_id=parent,
                )

            best = search(features, train, holdout, hpo_trials, settings.learner_seed, log_trial)
        else:
            best = train_offline(features, train, holdout, TrainParams(), settings.learner_seed)
        metrics = best.evaluation.as_metrics() | {
            "examples_seen": float(best.train_examples),
            "holdout_size": float(len(holdout)),
            "train_time_s": best.train_s,
        }
        version = registry.log_version(
            name,
            export(
                best.trainer.net,
                center=None,
                threshold=max(
                    best.trainer.fitted_threshold(holdout, settings.learner_target_precision),
                    settings.learner_min_confidence,
                ),
                **({} if best.posterior is None else {"posterior": best.posterior.export()}),
            ),
            params=params_dict(best.params) | {"seed": settings.learner_seed, "source": "replay"},
            metrics=metrics,
            tags={"source": "replay"},
            run_name="replay-model",
            parent_run_id=parent,
        ).version
    except BaseException:
        registry.end_run(parent, failed=True)
        raise
    registry.end_run(parent)
    registry.set_alias(name, CHALLENGER, version)
    report |= {"version": version, "params": params_dict(best.params), "metrics": metrics, "promoted": False}
    if promote:
        previous = registry.version_for(name, CHAMPION)
        if previous is not None:
            registry.set_alias(name, PREVIOUS, previous)
        registry.set_alias(name, CHAMPION, version)
        producer = EventProducer(profile.producer(), topics)
        try:
            event = RouterModelPromoted(
                correlation_id=uuid.uuid4(),
                producer="replay",
                registry_name=name,
                version=version,
                previous_version=previous,
            )
            producer.send(Outgoing(Topic.ROUTER_MODELS, "router", event))
            producer.flush(10)
        finally:
            producer.close()
        report["promoted"] = True
    return report
