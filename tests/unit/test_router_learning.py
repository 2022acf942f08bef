"""The routing network learns from outcomes: bandit and corrective feedback, new agents, deterministic replay."""

from __future__ import annotations

import numpy as np
import pytest

from smolit.learner.trainer import Outcome, Trainer, new_trainer
from smolit.router.features import AgentFeatures

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def world() -> dict:
    rng = np.random.default_rng(7)
    centers = _unit(rng.normal(size=(4, DIM)))
    # Cards describe their domain badly: each card leans towards its neighbour's domain, so similarity alone errs.
    cards = _unit(centers[:3] * 0.6 + np.roll(centers[:3], -1, axis=0) * 0.8)
    return {"rng": rng, "centers": centers, "cards": cards}


def _requests(world: dict, domain: int, n: int) -> np.ndarray:
    return _unit(world["centers"][domain] + 0.35 * world["rng"].normal(size=(n, DIM)))


def _features(world: dict, agents: int = 3) -> AgentFeatures:
    names = ["a", "b", "c", "d"][:agents]
    protos = world["cards"] if agents == 3 else np.vstack([world["cards"], world["centers"][3:4]])
    return AgentFeatures.from_vectors(names, protos, [1] * agents)


def _accuracy(trainer: Trainer, tests: list[tuple[np.ndarray, str]]) -> float:
    x = np.stack([e for e, _ in tests])
    return float(np.mean([p == t for p, (_, t) in zip(trainer.predict(x), tests, strict=True)]))


def _test_set(world: dict, domains: int = 3) -> list[tuple[np.ndarray, str]]:
    return [(e, "abcd"[d]) for d in range(domains) for e in _requests(world, d, 100)]


def _bandit_round(trainer: Trainer, world: dict, n: int, epsilon: float = 0.2) -> None:
    """Route like the live router (epsilon-greedy), reward the choice when it is the request's domain."""
    rng = world["rng"]
    agents = trainer.features.agents
    for _ in range(n):
        domain = int(rng.integers(len(agents)))
        embedding = _requests(world, domain, 1)[0]
        greedy = trainer.predict(embedding[None])[0]
        explore = rng.random() < epsilon
        agent = agents[int(rng.integers(len(agents)))] if explore else greedy
        propensity = epsilon / len(agents) + (1 - epsilon) * (agent == greedy)
        trainer.add([Outcome(embedding, agent, good=agent == "abcd"[domain], propensity=propensity)])
        trainer.train(1)


def test_bandit_feedback_beats_the_similarity_cold_start(world: dict) -> None:
    trainer = new_trainer(_features(world), DIM, hidden=32, seed=1)
    tests = _test_set(world)
    before = _accuracy(trainer, tests)
    _bandit_round(trainer, world, 600)
    after = _accuracy(trainer, tests)
    assert before < 0.7, "the synthetic cards must mislead the similarity prior, or the test proves nothing"
    assert after >= before + 0.25
    assert after >= 0.9


def test_corrective_feedback_learns_with_few_examples(world: dict) -> None:
    trainer = new_trainer(_features(world), DIM, hidden=32, seed=1)
    rng = world["rng"]
    for _ in range(150):
        domain = int(rng.integers(3))
        trainer.add([Outcome(_requests(world, domain, 1)[0], "a", good=domain == 0, preferred="abcd"[domain])])
    trainer.train(150)
    # The noise sets the ceiling: logistic regression fit on the same 150 examples reaches 0.93 on this test set.
    assert _accuracy(trainer, _test_set(world)) >= 0.88


def test_a_new_agent_is_scored_at_once_and_then_learned(world: dict) -> None:
    trainer = new_trainer(_features(world), DIM, hidden=32, seed=1)
    _bandit_round(trainer, world, 300)
    trainer.set_features(_features(world, agents=4))
    new_domain = _requests(world, 3, 50)
    # Its card describes its domain well: most of its requests reach it with no retraining (chance is 0.25).
    assert trainer.probabilities(new_domain).shape == (50, 4)
    assert np.mean([p == "d" for p in trainer.predict(new_domain)]) >= 0.6
    _bandit_round(trainer, world, 300)
    assert _accuracy(trainer, _test_set(world, domains=4)) >= 0.85


def test_evaluation_reports_classification_and_calibration(world: dict) -> None:
    trainer = new_trainer(_features(world), DIM, hidden=32, seed=1)
    _bandit_round(trainer, world, 400)
    holdout = [Outcome(e, "a", good=t == "a", preferred=t) for e, t in _test_set(world)]
    report = trainer.evaluate(holdout)
    assert report.examples == 300
    assert report.accuracy is not None and 0.0 <= report.accuracy <= 1.0
    assert set(report.per_agent_f1) == {"a", "b", "c"}
    assert report.log_loss is not None and report.log_loss > 0
    assert report.calibration_error is not None and 0.0 <= report.calibration_error <= 1.0
    assert "f1_a" in report.as_metrics()


def test_replaying_the_same_outcomes_gives_the_same_model(world: dict) -> None:
    outcomes = [Outcome(e, "abc"[i % 3], good=(i % 3) == 0) for i, (e, _) in enumerate(_test_set(world))]

    def train() -> np.ndarray:
        trainer = new_trainer(_features(world), DIM, hidden=32, seed=3)
        trainer.add(outcomes)
        trainer.train(50)
        return trainer.probabilities(np.stack([o.embedding for o in outcomes[:20]]))

    np.testing.assert_array_equal(train(), train())


def test_the_threshold_counts_unnamed_bad_outcomes_of_the_networks_pick(world: dict) -> None:
    """Requests of a domain no agent serves (negative feedback, no agent named) raise the fitted threshold, so such
    requests fall below it (low confidence, for discovery); without them the labelled outcomes alone set it."""
    trainer = new_trainer(_features(world), DIM, hidden=32, seed=1)
    rng = world["rng"]
    for _ in range(300):
        domain = int(rng.integers(3))
        trainer.add([Outcome(_requests(world, domain, 1)[0], "a", good=domain == 0, preferred="abcd"[domain])])
    trainer.train(300)
    known = [Outcome(e, t, good=True) for e, t in _test_set(world)]
    unserved = _requests(world, 3, 150)
    picks = trainer.predict(unserved)
    strays = [Outcome(e, p, good=False) for e, p in zip(unserved, picks, strict=True)]
    base = trainer.fitted_threshold(known, 0.8)
    raised = trainer.fitted_threshold(known + strays, 0.8)
    assert raised > base
    top = trainer.probabilities(unserved).max(axis=1)
    assert np.mean(top < raised) > np.mean(top < base)
    # Unnamed bad outcomes of an agent the network would not pick say nothing about its pick.
    elsewhere = [Outcome(o.embedding, next(a for a in "abc" if a != o.agent), good=False) for o in strays]
    assert trainer.fitted_threshold(known + elsewhere, 0.8) == base


def test_format_1_models_keep_scoring_as_they_were_trained(world: dict) -> None:
    """Registered format-1 networks (correction inside the temperature product) restore with that formula; new
    networks export format 2 and round-trip exactly."""
    import torch

    from smolit.router.model import FORMAT, RouterNet, export, restore

    features = _features(world)
    x = torch.from_numpy(_requests(world, 0, 5))
    cards = torch.from_numpy(features.card_vectors())
    priors = torch.from_numpy(features.priors(x.numpy()))
    legacy = RouterNet(DIM, hidden=8, scaled_deltas=True)
    legacy.ensure_agents(features.agents)
    with torch.no_grad():
        for delta in legacy.deltas.values():
            delta.normal_()
    legacy.eval()
    payload = export(legacy)
    assert payload["format"] == 1
    with torch.no_grad():
        expected = legacy.log_temperature.exp() * (x @ (cards + torch.stack(list(legacy.deltas.values()))).T)
        expected = expected + legacy.prior_weight * priors + legacy.offset
        assert torch.allclose(restore(payload)(x, cards, priors, features.agents), expected, atol=1e-5)
        unscaled = restore(payload | {"format": FORMAT})  # the same weights read as format 2 score differently
        assert not torch.allclose(unscaled(x, cards, priors, features.agents), expected, atol=1e-3)
        assert export(unscaled)["format"] == FORMAT == 2
        assert torch.equal(
            restore(export(unscaled))(x, cards, priors, features.agents), unscaled(x, cards, priors, features.agents)
        )
    with pytest.raises(ValueError, match="format"):
        restore(payload | {"format": 3})


def test_policy_value_credits_a_better_network_on_traffic_another_one_routed(world: dict) -> None:
    """On thumbs-up labels the network that routed the traffic scores 1.0 (it labels its own picks); the policy
    value instead credits a network that avoids the agents rated bad, and names the better one."""
    logger = new_trainer(_features(world), DIM, hidden=32, seed=1)  # untrained: similarity, mostly wrong
    learned = new_trainer(_features(world), DIM, hidden=32, seed=1)
    _bandit_round(learned, world, 600)
    rng, epsilon, agents = world["rng"], 0.1, logger.features.agents
    logged, domains = [], []
    for _ in range(300):
        domain = int(rng.integers(3))
        domains.append(domain)
        embedding = _requests(world, domain, 1)[0]
        greedy = logger.predict(embedding[None])[0]
        agent = agents[int(rng.integers(len(agents)))] if rng.random() < epsilon else greedy
        propensity = epsilon / len(agents) + (1 - epsilon) * (agent == greedy)
        logged.append(Outcome(embedding, agent, good=agent == "abcd"[domain], propensity=propensity))
    thumbs_up = logger.evaluate(logged).accuracy
    assert thumbs_up is not None and thumbs_up >= 0.9 >= (learned.evaluate(logged).accuracy or 0) - 0.05
    mine, theirs = learned.policy_value(logged), logger.policy_value(logged)
    assert mine is not None and theirs is not None
    assert theirs < 0.7 and mine >= theirs + 0.25
    # Outcomes naming the right agent are scored directly: the same ranking, from other evidence.
    named = [Outcome(o.embedding, o.agent, o.good, preferred="abcd"[d]) for o, d in zip(logged, domains, strict=True)]
    assert (learned.policy_value(named) or 0) >= (logger.policy_value(named) or 0) + 0.25
    assert learned.policy_value([]) is None


def test_candidates_are_the_running_average_of_the_weights(world: dict) -> None:
    import torch

    trainer = new_trainer(_features(world, agents=3), DIM, hidden=8, seed=1)
    untouched = trainer.averaged()
    assert all(torch.equal(a, b) for a, b in zip(untouched.parameters(), trainer.net.parameters(), strict=True))
    _bandit_round(trainer, world, 50)
    averaged = dict(trainer.averaged().named_parameters())
    moved = dict(trainer.net.named_parameters())
    assert not torch.allclose(averaged["prior_weight"], moved["prior_weight"])  # lags the last iterate
    trainer.set_features(_features(world, agents=4))  # an agent joins: averaged from its first update on
    _bandit_round(trainer, world, 5)
    assert "deltas.d" in dict(trainer.averaged().named_parameters())
    plain = new_trainer(_features(world, agents=3), DIM, hidden=8, seed=1, average_decay=0)
    _bandit_round(plain, world, 5)
    assert all(torch.equal(a, b) for a, b in zip(plain.averaged().parameters(), plain.net.parameters(), strict=True))


def test_refitted_candidates_fit_the_buffer_better_and_leave_the_live_network_alone(world: dict) -> None:
    """A candidate fitted in full batch on the buffer has a lower training loss than the running average it starts
    from, the same outcomes give the same candidate, and online learning goes on from the untouched live network."""
    import torch

    trainer = new_trainer(_features(world), DIM, seed=1)
    _bandit_round(trainer, world, 150)
    live = {name: p.detach().clone() for name, p in trainer.net.named_parameters()}
    batch = trainer._batch(list(trainer.buffer))
    first, second = trainer.refit(1000, 50, 1e-5), trainer.refit(1000, 50, 1e-5)
    with torch.no_grad():
        assert float(trainer._loss_on(batch, first)) < float(trainer._loss_on(batch, trainer.averaged())) - 0.01
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))
    assert all(torch.equal(p, live[name]) for name, p in trainer.net.named_parameters())
    assert _accuracy(Trainer(first, trainer.features), _test_set(world)) >= 0.9
    same = trainer.refit(1000, 0, 1e-5)  # no iterations: the running average itself
    assert all(torch.equal(a, b) for a, b in zip(same.parameters(), trainer.averaged().parameters(), strict=True))


def test_the_hidden_layer_is_optional_and_both_shapes_round_trip(world: dict) -> None:
    import torch

    from smolit.router.model import RouterNet, export, restore

    features = _features(world)
    x = torch.from_numpy(_requests(world, 1, 4))
    cards, priors = torch.from_numpy(features.card_vectors()), torch.from_numpy(features.priors(x.numpy()))
    assert not any(name.startswith("refine") for name, _ in RouterNet(DIM).named_parameters())  # default: none
    for hidden in (0, 8):
        net = new_trainer(features, DIM, hidden=hidden, seed=3).net
        _ = net(x, cards, priors, features.agents)
        net.eval()
        with torch.no_grad():
            again = restore(export(net))
            assert again.hidden == hidden
            assert torch.equal(again(x, cards, priors, features.agents), net(x, cards, priors, features.agents))
