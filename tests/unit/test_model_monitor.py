"""The live model monitor rolls a pipeline model's champion back when its live outcomes are significantly worse."""

from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry

from smolit.contracts import (
    AnswerProduced,
    FeedbackGiven,
    ModelOutcomeRecorded,
    ModelPromoted,
    ModelUse,
    RolledBack,
    Topic,
    decode,
    encode,
)
from smolit.learner import ModelMonitor, ModelMonitorConfig, ModelMonitorMetrics


class FakeAliases:
    def __init__(self, aliases: dict[tuple[str, str], str]) -> None:
        self.aliases = aliases
        self.opened = 0

    def version_for(self, name: str, alias: str) -> str | None:
        return self.aliases.get((name, alias))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[(name, alias)] = version


def _monitor(aliases: FakeAliases, **config: object) -> ModelMonitor:
    def open_registry() -> FakeAliases:
        aliases.opened += 1
        return aliases

    settings = {"min_outcomes": 20, "alpha": 0.05, "ignore": frozenset({"smolit-router"})} | config
    return ModelMonitor(
        open_registry,
        ModelMonitorConfig(**settings),  # type: ignore[arg-type]
        ModelMonitorMetrics.create(CollectorRegistry()),
    )


def _promoted(name: str, version: str, previous: str | None) -> ModelPromoted:
    return ModelPromoted(
        correlation_id=uuid.uuid4(), producer="cli", registry_name=name, version=version, previous_version=previous
    )


def _outcomes(name: str, version: str, good: int, bad: int) -> list[ModelOutcomeRecorded]:
    return [
        ModelOutcomeRecorded(
            correlation_id=uuid.uuid4(), producer="agents", model=name, version=version, success=i < good
        )
        for i in range(good + bad)
    ]


def _served(name: str, version: str, error: str | None = None) -> AnswerProduced:
    use = ModelUse(step="ocr", name=name, version=version, error=error)
    return AnswerProduced(
        correlation_id=uuid.uuid4(), producer="agents", agent="a", answer="x", backend="extractive", latency_ms=1.0,
        models=(use,),
    )  # fmt: skip


def _rating(answer: AnswerProduced, rating: int, user: str = "u", **extra: object) -> FeedbackGiven:
    return FeedbackGiven(correlation_id=answer.correlation_id, producer="gateway", rating=rating, user=user, **extra)  # type: ignore[arg-type]


def test_a_significantly_worse_champion_is_rolled_back_once_with_the_evidence() -> None:
    """V2 fails far more often than v1 did: aliases swap, one RolledBack names v1 with the counts and z score;
    more bad outcomes publish nothing more."""
    aliases = FakeAliases({("smolit-ocr", "champion"): "2", ("smolit-ocr", "previous"): "1"})
    monitor = _monitor(aliases)
    monitor.prime([_promoted("smolit-ocr", "2", "1")])
    assert monitor.handle(_outcomes("smolit-ocr", "1", 19, 1)) == []
    assert monitor.handle(_outcomes("smolit-ocr", "2", 10, 5)) == []  # too few outcomes of v2 yet
    assert aliases.opened == 0  # the registry is opened only to act
    [out] = monitor.handle(_outcomes("smolit-ocr", "2", 2, 3))
    assert out.topic == Topic.ROUTER_MODELS and out.key == "smolit-ocr"
    event = out.event
    assert isinstance(event, RolledBack)
    assert (event.registry_name, event.version, event.from_version) == ("smolit-ocr", "1", "2")
    assert event.evidence["champion_good"] == 12 and event.evidence["champion_judged"] == 20
    assert event.evidence["previous_good"] == 19 and event.evidence["z"] < -1.645
    assert "12/20 of version 2 below 19/20 of version 1" in event.reason
    assert aliases.aliases == {("smolit-ocr", "champion"): "1", ("smolit-ocr", "previous"): "2"}
    assert decode(encode(event)[0]) == event
    assert monitor.handle(_outcomes("smolit-ocr", "2", 0, 10)) == []
    assert monitor.handle([event]) == []  # its own event read back from the topic changes nothing


def test_a_champion_that_is_not_worse_stays() -> None:
    """Equal rates, or a better new champion, keep the champion."""
    aliases = FakeAliases({("m", "champion"): "2", ("m", "previous"): "1"})
    monitor = _monitor(aliases)
    monitor.handle([_promoted("m", "2", "1")])
    assert monitor.handle(_outcomes("m", "1", 15, 15) + _outcomes("m", "2", 14, 16)) == []
    assert monitor.handle(_outcomes("m", "2", 30, 0)) == []
    assert aliases.opened == 0


def test_user_feedback_on_answers_counts_for_the_models_that_served_them() -> None:
    """Thumbs and stars on an answer count for each model whose output it used, whichever topic arrives first;
    inferred ratings, neutral stars, failed readings and a user's second rating do not count."""
    aliases = FakeAliases({("ocr", "champion"): "2", ("ocr", "previous"): "1"})
    monitor = _monitor(aliases, min_outcomes=5)
    monitor.handle([_promoted("ocr", "2", "1")])
    good_v1 = [_served("ocr", "1") for _ in range(6)]
    monitor.handle(good_v1 + [_rating(a, 1) for a in good_v1])
    assert monitor.live["ocr"].rate("1") == (6, 6)
    bad_v2 = [_served("ocr", "2") for _ in range(6)]
    early = [_rating(a, 1, scale="stars") for a in bad_v2[:3]]  # feedback read before its answer
    assert monitor.handle(early) == []
    inferred = ModelUse(step="sentiment", name="smolit-sentiment", version="1")
    ignored = [
        _rating(bad_v2[3], 5, inferred_by=inferred),
        _rating(bad_v2[4], 3, scale="stars"),
        _rating(bad_v2[0], 5, scale="stars"),  # the same user again
    ]
    failed = _served("ocr", "2", error="implausible")
    assert monitor.handle([*ignored, failed, _rating(failed, -1)]) == []
    assert monitor.live["ocr"].rate("2") == (0, 0)
    assert monitor.handle(bad_v2[:3]) == []  # the early feedback joins its answers now
    assert monitor.live["ocr"].rate("2") == (0, 3)
    out = monitor.handle(bad_v2[3:] + [_rating(a, -1, user="v") for a in bad_v2[3:]])
    assert [o.event.version for o in out] == ["1"]  # type: ignore[attr-defined]


def test_the_registry_is_followed_when_the_aliases_moved_meanwhile() -> None:
    """An operator (or another learner) already rolled back: no second rollback, the monitor follows the registry."""
    aliases = FakeAliases({("m", "champion"): "1", ("m", "previous"): "2"})
    monitor = _monitor(aliases)
    monitor.handle([_promoted("m", "2", "1")])
    assert monitor.handle(_outcomes("m", "1", 20, 0) + _outcomes("m", "2", 0, 20)) == []
    assert (monitor.champions["m"].current, monitor.champions["m"].previous) == ("1", "2")
    assert aliases.aliases[("m", "champion")] == "1"


def test_a_rolled_back_version_promoted_again_gets_a_fresh_trial_and_the_router_is_ignored() -> None:
    """Promoting the rolled-back version again restarts its count; the router network is not this monitor's."""
    aliases = FakeAliases({("m", "champion"): "2", ("m", "previous"): "1"})
    monitor = _monitor(aliases)
    monitor.handle([_promoted("m", "2", "1")])
    assert len(monitor.handle(_outcomes("m", "1", 20, 0) + _outcomes("m", "2", 0, 20))) == 1
    aliases.aliases = {("m", "champion"): "2", ("m", "previous"): "1"}
    monitor.handle([_promoted("m", "2", "1")])
    assert monitor.live["m"].rate("2") == (0, 0)
    assert len(monitor.handle(_outcomes("m", "2", 0, 20))) == 1

    monitor.handle([_promoted("smolit-router", "2", "1")])
    assert monitor.handle(_outcomes("smolit-router", "1", 20, 0) + _outcomes("smolit-router", "2", 0, 20)) == []


def test_a_registry_outage_postpones_the_rollback() -> None:
    """The registry cannot be opened: nothing goes out, and the next outcome judges again."""
    aliases = FakeAliases({("m", "champion"): "2", ("m", "previous"): "1"})
    calls = []

    def flaky() -> FakeAliases:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("mlflow down")
        return aliases

    monitor = ModelMonitor(flaky, ModelMonitorConfig(min_outcomes=20))
    monitor.handle([_promoted("m", "2", "1")])
    assert monitor.handle(_outcomes("m", "1", 20, 0) + _outcomes("m", "2", 0, 20)) == []
    assert [o.event.version for o in monitor.handle(_outcomes("m", "2", 0, 1))] == ["1"]  # type: ignore[attr-defined]


def test_old_rolled_back_payloads_decode_without_evidence() -> None:
    """A RolledBack from before the evidence field decodes with empty evidence."""
    event = RolledBack(correlation_id=uuid.uuid4(), producer="cli", registry_name="m", version="1", from_version="2",
                       reason="manual")  # fmt: skip
    raw = encode(event)[0].replace(b',"evidence":{}', b"")
    assert b"evidence" not in raw
    assert decode(raw).evidence == {}  # type: ignore[attr-defined]
