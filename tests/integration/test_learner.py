"""The learner trains from training examples, registers candidates in a real MLflow store, promotes behind a gate,
and the router swaps the champion in. Vectors come from a synthetic world whose agent cards mislead similarity."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from smolit.contracts import AgentCard, RequestReceived, RolledBack, RouterModelPromoted, TrainingExample, pack_vector
from smolit.infra.registry import CHALLENGER, CHAMPION, PREVIOUS, open_registry
from smolit.learner import Learner, LearnerConfig, LearnerMetrics
from smolit.learner.trainer import new_trainer
from smolit.router import ModelWatcher, Router, RouterMetrics
from smolit.router.network import NetworkScorer
from smolit.router.policy import decide

from ..conftest import read_events

DIM = 16
AGENTS = ("alpha", "beta", "general")


class World:
    """Three domains; each card leans towards the next domain, so similarity routing is mostly wrong."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = np.random.default_rng(seed)
        self.centers = self._unit(self.rng.normal(size=(3, DIM)))
        self.cards = self._unit(self.centers * 0.6 + np.roll(self.centers, -1, axis=0) * 0.8)
        self._vectors: dict[str, np.ndarray] = {f"card {a}": self.cards[i] for i, a in enumerate(AGENTS)}

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    def request(self, domain: int) -> str:
        text = f"question {len(self._vectors)} for domain {domain}"
        self._vectors[text] = self._unit(self.centers[domain] + 0.3 * self.rng.normal(size=DIM))
        return text

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vectors[t] for t in texts])

    def cards_by_name(self) -> dict[str, AgentCard]:
        return {a: AgentCard(name=a, description=f"card {a}") for a in AGENTS}

    def example(self, domain: int, agent: str, good: bool) -> TrainingExample:
        text = self.request(domain)
        return TrainingExample(
            correlation_id=uuid.uuid4(),
            text=text,
            embedding=pack_vector(self._vectors[text].tolist()),
            agent=agent,
            scores={},
            positive=good,
        )

    def bandit_examples(self, n: int) -> list[TrainingExample]:
        out = []
        for _ in range(n):
            domain = int(self.rng.integers(3))
            agent = AGENTS[int(self.rng.integers(3))]
            out.append(self.example(domain, agent, good=agent == AGENTS[domain]))
        return out


@pytest.fixture
def world() -> World:
    return World()


def _learner(world: World, router: Router, tmp_path: Path, **config: object) -> Learner:
    registry = open_registry(f"sqlite:///{tmp_path}/mlflow/mlflow.db", tmp_path)
    options = {"train_every": 300, "min_holdout": 30, "seed": 1} | config
    return Learner(router.features, registry, LearnerMetrics.create(CollectorRegistry()), LearnerConfig(**options))


def _router(world: World) -> Router:
    return Router(
        world.cards_by_name(),
        world,
        fallback="general",
        threshold=-1.0,
        metrics=RouterMetrics.create(CollectorRegistry()),
    )


def _route(router: Router, world: World, domain: int, n: int = 60) -> tuple[float, set[str]]:
    requests = [
        RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text=world.request(domain)) for _ in range(n)
    ]
    decided = [o.event for o in router.handle(requests) if o.event.type == "RoutingDecided"]
    return float(np.mean([d.agent == AGENTS[domain] for d in decided])), {d.model_version for d in decided}


def test_feedback_trains_a_champion_and_the_router_swaps_it_in(world: World, tmp_path: Path) -> None:
    router = _router(world)
    learner = _learner(world, router, tmp_path)
    before, versions = _route(router, world, 0)
    assert versions == {"similarity-v1"}
    assert before < 0.5, "the synthetic cards must mislead similarity, or this test proves nothing"

    out = learner.handle(world.bandit_examples(500))

    promoted = [o.event for o in out if isinstance(o.event, RouterModelPromoted)]
    assert len(promoted) == 1 and promoted[0].previous_version is None
    registry = learner.registry
    version = promoted[0].version
    assert registry.version_for("smolit-router", CHAMPION) == version
    assert registry.version_for("smolit-router", CHALLENGER) == version
    logged = registry.versions("smolit-router")[-1].metrics
    for key in ("accuracy", "macro_f1", "f1_alpha", "log_loss", "calibration_error", "examples_seen", "threshold"):
        assert key in logged, key

    watcher = ModelWatcher(
        router, lambda: NetworkScorer(registry.load("smolit-router", version), router.features, version)
    )
    watcher.handle(promoted)
    after, versions = _route(router, world, 0)
    assert versions == {version}
    assert after >= before + 0.4


def test_the_gate_keeps_the_champion_when_a_candidate_is_worse(world: World, tmp_path: Path) -> None:
    router = _router(world)
    learner = _learner(world, router, tmp_path)
    assert learner.handle(world.bandit_examples(500))
    champion = learner.registry.version_for("smolit-router", CHAMPION)

    # A worse candidate: the untrained network (similarity ranking), evaluated on the same holdout (not refitted:
    # fitting it on the holdout it is then judged on would make it good).
    learner.trainer = new_trainer(learner.trainer.features, DIM, seed=9)
    learner.config = dataclasses.replace(learner.config, refit_iterations=0)
    learner.trainer.add(learner.holdout)  # something pending, so a candidate is due
    assert learner.candidate() == []
    registry = learner.registry
    assert registry.version_for("smolit-router", CHAMPION) == champion
    challenger = registry.version_for("smolit-router", CHALLENGER)
    assert challenger is not None and int(challenger) > int(champion)
    assert (
        registry.versions("smolit-router")[-1].metrics["accuracy"]
        < registry.versions("smolit-router")[0].metrics["accuracy"]
    )


def test_a_second_promotion_records_the_previous_champion_and_warm_starts(world: World, tmp_path: Path) -> None:
    router = _router(world)
    learner = _learner(world, router, tmp_path, promotion_margin=-1.0)  # any candidate passes: test the bookkeeping
    first = next(o.event for o in learner.handle(world.bandit_examples(500)))
    second = next(o.event for o in learner.handle(world.bandit_examples(500)))
    assert isinstance(second, RouterModelPromoted) and second.previous_version == first.version
    assert learner.registry.version_for("smolit-router", PREVIOUS) == first.version

    # A restarted learner continues from the champion instead of from scratch.
    again = _learner(world, router, tmp_path)
    assert again.champion_version == second.version
    holdout = list(learner.holdout)
    assert again.trainer.evaluate(holdout).accuracy == learner.champion.evaluate(holdout).accuracy


def test_models_cli_lists_promotes_and_rolls_back(
    world: World, tmp_path: Path, profile, topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from smolit.cli import app
    from smolit.contracts import RolledBack, Topic
    from smolit.errors import SetupError

    router = _router(world)
    learner = _learner(world, router, tmp_path, promotion_margin=-1.0)
    learner.handle(world.bandit_examples(500))
    learner.handle(world.bandit_examples(500))  # versions 1 and 2; 2 is champion, 1 previous
    for var, value in {
        "SMOLIT_DATA_DIR": str(tmp_path),
        "SMOLIT_KAFKA_BOOTSTRAP": profile.bootstrap,
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
    }.items():
        monkeypatch.setenv(var, value)
    runner = CliRunner()

    listed = runner.invoke(app, ["models", "versions", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["version"]: r for r in json.loads(listed.stdout)}
    assert set(rows["2"]["aliases"]) == {"champion", "challenger"}
    assert rows["1"]["aliases"] == ["previous"] and rows["1"]["accuracy"] is not None

    rolled = runner.invoke(app, ["models", "rollback", "--reason", "test"])
    assert rolled.exit_code == 0, rolled.output
    assert learner.registry.version_for("smolit-router", CHAMPION) == "1"
    promoted = runner.invoke(app, ["models", "promote", "2"])
    assert promoted.exit_code == 0, promoted.output
    assert learner.registry.version_for("smolit-router", CHAMPION) == "2"
    missing = runner.invoke(app, ["models", "promote", "99"])  # `smolit` maps SetupError to exit 2 in main()
    assert isinstance(missing.exception, SetupError) and "no version 99" in str(missing.exception)

    events = read_events(profile, topics, Topic.ROUTER_MODELS, 2)
    assert isinstance(events[0], RolledBack) and (events[0].version, events[0].from_version) == ("1", "2")
    assert isinstance(events[1], RouterModelPromoted) and events[1].previous_version == "1"

    # The learner follows the registry: its next candidate is compared against version 2 again.
    learner._follow_registry()
    assert learner.champion_version == "2"


def test_a_champion_with_worse_live_feedback_is_rolled_back(world: World, tmp_path: Path) -> None:
    router = _router(world)
    learner = _learner(world, router, tmp_path, promotion_margin=-1.0, rollback_min_outcomes=40)
    learner.handle(world.bandit_examples(500))
    learner.handle(world.bandit_examples(500))
    assert (learner.previous_version, learner.champion_version) == ("1", "2")

    def live(version: str, good: bool) -> TrainingExample:
        example = world.example(0, "alpha", good)
        return example.model_copy(update={"model_version": version})

    # Version 1 answered well (35/50), version 2 badly (15/50): significant at alpha 0.05.
    batch = [live("1", i < 35) for i in range(50)] + [live("2", i < 15) for i in range(50)]
    out = learner.handle(batch)
    rolled = [o.event for o in out if isinstance(o.event, RolledBack)]
    assert len(rolled) == 1 and (rolled[0].version, rolled[0].from_version) == ("1", "2")
    assert "15/50" in rolled[0].reason and "35/50" in rolled[0].reason
    assert learner.registry.version_for("smolit-router", CHAMPION) == "1"
    assert learner.registry.version_for("smolit-router", PREVIOUS) == "2"

    # A small, insignificant gap changes nothing.
    calm = _learner(world, router, tmp_path / "calm", promotion_margin=-1.0, rollback_min_outcomes=40)
    calm.handle(world.bandit_examples(500))
    calm.handle(world.bandit_examples(500))
    batch = [live("1", i < 30) for i in range(50)] + [live("2", i < 27) for i in range(50)]
    assert not [o for o in calm.handle(batch) if isinstance(o.event, RolledBack)]


def test_hot_swap_under_load_loses_no_request(world: World, tmp_path: Path, profile, topics, producer, pool) -> None:
    """Requests stream through a real router consumer loop while a champion is promoted over the broker: every
    request is routed exactly once, the early ones by similarity, the later ones by the new model."""
    import time

    from smolit.contracts import Topic
    from smolit.infra.kafka import ConsumerLoop, LoopConfig, Outgoing, PostgresDeduper
    from smolit.infra.metrics import ConsumerMetrics

    router = _router(world)
    learner = _learner(world, router, tmp_path)
    [promotion] = [o for o in learner.handle(world.bandit_examples(500)) if isinstance(o.event, RouterModelPromoted)]
    version = promotion.event.version
    registry = learner.registry
    watcher = ModelWatcher(
        router, lambda: NetworkScorer(registry.load("smolit-router", version), router.features, version)
    )
    metrics = ConsumerMetrics.create(CollectorRegistry())
    tag = uuid.uuid4().hex[:6]

    def loop(group: str, wanted: list[Topic], handler, dedupe: bool) -> ConsumerLoop:
        config = LoopConfig(group=f"{group}-{tag}", topics=[topics(t) for t in wanted], batch_size=16, dedupe=dedupe)
        return ConsumerLoop(profile.consumer(config.group), config, handler, producer, PostgresDeduper(pool), metrics)

    loops = [
        loop("router", [Topic.REQUESTS], router.handle, True),
        loop("models", [Topic.ROUTER_MODELS], watcher.handle, False),
    ]
    threads = [lp.start_thread() for lp in loops]
    for lp in loops:
        assert lp.assigned.wait(30), "consumer group join timed out"
    sent: list[uuid.UUID] = []
    try:
        for i in range(240):
            request = RequestReceived(
                correlation_id=uuid.uuid4(), conversation_id=f"c{i % 7}", text=world.request(i % 3)
            )
            producer.send(Outgoing(Topic.REQUESTS, request.conversation_id, request))
            sent.append(request.correlation_id)
            if i == 120:
                producer.send(promotion)
            producer.poll(0)
            time.sleep(0.01)
        producer.flush()
        decisions = read_events(profile, topics, Topic.DECISIONS, len(sent), timeout_s=60)
    finally:
        for lp in loops:
            lp.stop()
        for thread in threads:
            thread.join(15)
    assert sorted(d.correlation_id for d in decisions) == sorted(sent)
    versions = [d.model_version for d in sorted(decisions, key=lambda d: sent.index(d.correlation_id))]
    assert versions[0] == "similarity-v1" and versions[-1] == version
    assert versions == sorted(versions, key=lambda v: v == version)  # one switch, never back


def test_holdout_examples_join_training_after_their_rounds(world: World, tmp_path: Path) -> None:
    """An example held out for two candidate evaluations then trains; the newest `min_holdout` stay held out, and
    the graduates are never evaluated on again."""
    router = _router(world)
    # Candidates only when the test asks: how many examples a random holdout split leaves must not matter.
    learner = _learner(world, router, tmp_path, train_every=10**6, holdout_rounds=2, min_holdout=10, seed=3)
    learner.handle(world.bandit_examples(130))
    learner.candidate()  # round one
    first = list(learner.holdout)
    seen, trained = learner.trainer.seen, learner.metrics.examples.labels("train")._value.get()
    assert len(first) > 10
    learner.handle(world.bandit_examples(130))
    learner.candidate()  # round two: the first batch graduates
    graduated = [o for o in first if all(o is not h for h in learner.holdout)]
    assert len(graduated) == len(first)  # all of them: the second batch alone keeps the holdout above 10
    assert len(learner.holdout) >= 10
    assert learner.metrics.examples.labels("graduated")._value.get() == len(graduated)
    trained = learner.metrics.examples.labels("train")._value.get() - trained
    assert learner.trainer.seen == seen + trained + len(graduated)

    kept = _learner(world, router, tmp_path / "never", train_every=10**6, seed=3)  # the default: never
    kept.handle(world.bandit_examples(260))
    kept.candidate()
    kept.candidate()
    assert kept.metrics.examples.labels("graduated")._value.get() == 0 and len(kept.holdout) > 20


def test_the_router_restarts_with_its_cached_champion(world: World, tmp_path: Path) -> None:
    """The champion the router loaded from the registry is cached on disk; a restarted router scores with it exactly
    as with the registry's copy, without opening MLflow. A cache of another registry, or a damaged one, is ignored."""
    from smolit.infra.settings import Settings
    from smolit.services.router import ChampionCache, champion_loader

    router = _router(world)
    learner = _learner(world, router, tmp_path)
    assert learner.handle(world.bandit_examples(500))  # promoted
    settings = Settings(data_dir=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    cache = ChampionCache(settings)
    assert cache.load(router) == (False, None)
    loaded = champion_loader(settings, router, cache)()  # from the registry, and written to the cache
    assert loaded is not None and loaded.version == learner.champion_version

    restarted = _router(world)
    known, cached = ChampionCache(settings).load(restarted)
    assert known and cached is not None and cached.version == loaded.version
    x = world.embed([world.request(d) for d in (0, 1, 2)])
    assert np.array_equal(cached.score(x), loaded.score(x))

    other = Settings(data_dir=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path}/elsewhere.db")
    assert ChampionCache(other).load(restarted) == (False, None)
    fresh = Settings(data_dir=tmp_path / "fresh")  # a registry without a champion: that is cached too
    assert champion_loader(fresh, restarted, ChampionCache(fresh))() is None
    assert ChampionCache(fresh).load(restarted) == (True, None)
    cache.path.write_bytes(b"not a torch file")
    assert cache.load(restarted) == (False, None)


def test_the_gate_compares_on_user_labelled_examples_that_arrived_after_the_champion(
    world: World, tmp_path: Path
) -> None:
    """Rating-only examples keep the whole holdout; once `min_holdout` held-out examples naming the right agent
    arrived after the champion was chosen, candidate and champion are compared on exactly those."""
    from smolit.learner.dataset import in_holdout

    router = _router(world)
    learner = _learner(world, router, tmp_path, min_holdout=10)
    learner.handle(world.bandit_examples(500))
    assert learner.champion is not None
    registry = learner.registry

    def gate_examples() -> float:
        return registry.versions("smolit-router")[-1].metrics["gate_examples"]

    learner.handle(world.bandit_examples(100))
    learner.candidate()
    assert gate_examples() == len(learner.holdout)  # ratings alone: the whole holdout

    corrected = []
    for example in world.bandit_examples(300):
        domain = int(example.text.rsplit(" ", 1)[1])
        corrected.append(example.model_copy(update={"preferred_agent": AGENTS[domain]}))
    fresh = sum(in_holdout(e.event_id, learner.config.holdout_share, learner.config.seed) for e in corrected)
    assert fresh >= 10
    learner.handle(corrected)
    promotions_before = learner.metrics.promotions._value.get()
    learner.candidate()
    assert gate_examples() == fresh < len(learner.holdout)
    if learner.metrics.promotions._value.get() > promotions_before:  # a new champion: nothing is fresh for it yet
        learner.handle(world.bandit_examples(20))
        learner.candidate()
        assert gate_examples() == len(learner.holdout)

    off = _learner(world, router, tmp_path / "off", min_holdout=10, fresh_gate=False)
    off.handle(world.bandit_examples(500) + corrected)
    off.candidate()
    assert off.registry.versions("smolit-router")[-1].metrics["gate_examples"] == len(off.holdout)


def test_thompson_routing_draws_from_the_registered_posterior(world: World, tmp_path: Path) -> None:
    """The learner registers the posterior variances with the candidate (through the MLflow artifact); a router with
    `thompson` loads them, still beats similarity on the synthetic world, and records its explorations' propensities."""
    router = Router(
        world.cards_by_name(),
        world,
        fallback="general",
        threshold=-1.0,
        metrics=RouterMetrics.create(CollectorRegistry()),
        seed=4,
        strategy="thompson",
    )
    learner = _learner(world, router, tmp_path)
    before, _ = _route(router, world, 0)
    promoted = [o.event for o in learner.handle(world.bandit_examples(500)) if isinstance(o.event, RouterModelPromoted)]
    assert len(promoted) == 1
    version = promoted[0].version
    scorer = NetworkScorer(learner.registry.load("smolit-router", version), router.features, version)
    assert scorer.has_posterior
    router.use_network(scorer)
    requests = [
        RequestReceived(correlation_id=uuid.uuid4(), conversation_id=f"c{i}", text=world.request(i % 3))
        for i in range(300)
    ]
    decided = [o.event for o in router.handle(requests) if o.event.type == "RoutingDecided"]
    accuracy = np.mean([d.agent == AGENTS[i % 3] for i, d in enumerate(decided)])
    assert accuracy >= before + 0.3
    assert all(0 < d.propensity <= 1 for d in decided)
    explored = [d for d in decided if d.exploration]
    assert explored, "a posterior fitted on 500 outcomes still leaves some requests uncertain"
    greedy = [decide(d.scores, fallback="general", threshold=scorer.threshold).agent for d in decided]
    assert all(d.exploration == (d.agent != g) for d, g in zip(decided, greedy, strict=True))
    assert len(explored) < 0.5 * len(decided)
