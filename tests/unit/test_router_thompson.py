"""Thompson sampling: the learner's posterior variances, their place in the model payload, and the router's draws."""

from __future__ import annotations

import io
import uuid
from collections import Counter

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from smolit.contracts import AgentCard, RequestReceived, RoutingDecided
from smolit.learner.trainer import Outcome, new_trainer
from smolit.router import Router, RouterMetrics
from smolit.router.model import RouterNet, export
from smolit.router.network import NetworkScorer

from . import test_router_learning as learning
from .test_router_learning import DIM, _features, _requests

world = learning.world  # the synthetic world fixture: cards that mislead similarity


def test_an_agent_with_many_outcomes_has_smaller_variances_than_one_with_few(world: dict) -> None:
    trainer = new_trainer(_features(world), DIM, seed=1)
    rng = world["rng"]
    outcomes = [Outcome(e, "a", good=bool(rng.random() < 0.5)) for e in _requests(world, 0, 300)]
    outcomes += [Outcome(e, "c", good=bool(rng.random() < 0.5)) for e in _requests(world, 2, 10)]
    trainer.add(outcomes)
    net = trainer.refit(1000, 30, 1e-4)
    posterior = trainer.posterior_variances(net, outcomes, 1e-4)
    assert posterior is not None
    assert posterior.prior_var == pytest.approx(1 / (2 * 1e-4 * len(outcomes)))
    a, b, c = (posterior.delta_var[x] for x in "abc")
    assert a.shape == (DIM,)
    assert float(a.sum()) < 0.5 * float(c.sum()) < 0.5 * float(b.sum())
    assert posterior.bias_var["a"] < posterior.bias_var["c"] < posterior.bias_var["b"]
    # "b" never answered: only the softmax rows of good outcomes (which name their agent) inform it, a little.
    assert bool((b <= posterior.prior_var).all())
    assert trainer.posterior_variances(net, [], 1e-4) is None
    assert trainer.posterior_variances(net, outcomes, 0.0) is None


class _Embedder:
    """Texts -> fixed vectors of the synthetic world (cards and requests)."""

    def __init__(self, world: dict) -> None:
        self.vectors = {f"card {a}": world["cards"][i] for i, a in enumerate("abc")}

    def add(self, text: str, vector: np.ndarray) -> str:
        self.vectors[text] = vector
        return text

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def _router(embedder: _Embedder, strategy: str = "thompson", exploration: float = 0.0, seed: int = 3) -> Router:
    return Router(
        {a: AgentCard(name=a, description=f"card {a}") for a in "abc"},
        embedder,
        fallback="c",
        threshold=0.0,
        metrics=RouterMetrics.create(CollectorRegistry()),
        exploration=exploration,
        seed=seed,
        strategy=strategy,  # type: ignore[arg-type]
    )


def _payload(posterior: dict | None, threshold: float = 0.0) -> dict[str, object]:
    net = RouterNet(DIM)
    net.ensure_agents(["a", "b", "c"])
    with torch.no_grad():  # a mild model (logits within about +-2), so its scores are not saturated at 0 or 1
        net.log_temperature.fill_(0.0)
        net.prior_weight.fill_(1.0)
        net.offset.fill_(0.0)
    extra = {} if posterior is None else {"posterior": posterior}
    return export(net, threshold=threshold, **extra)


def _decide(router: Router, text: str, n: int) -> list[RoutingDecided]:
    requests = [RequestReceived(correlation_id=uuid.uuid4(), conversation_id=f"c{i}", text=text) for i in range(n)]
    return [o.event for o in router.handle(requests) if isinstance(o.event, RoutingDecided)]


def test_the_payload_round_trips_with_and_without_variances(world: dict) -> None:
    features = _features(world)
    delta_var = {a: torch.full((DIM,), v) for a, v in zip("ab", (0.01, 0.02), strict=True)}
    posterior = {"delta_var": delta_var, "bias_var": {"a": 0.1, "b": 0.2}, "prior_var": 3.0}
    buffer = io.BytesIO()
    torch.save(_payload(posterior), buffer)  # the registry's file format (loaded with weights_only)
    buffer.seek(0)
    scorer = NetworkScorer(torch.load(buffer, weights_only=True), features, "v1")
    assert scorer.has_posterior
    q = _requests(world, 0, 1)[0]
    (mean,), (variance,) = scorer.logit_posterior(q[None])
    square = float(np.sum(q.astype(np.float64) ** 2))
    # "c" was not fitted: the prior variance for its correction and bias.
    np.testing.assert_allclose(variance, [0.01 * square + 0.1, 0.02 * square + 0.2, 3.0 * square + 3.0], rtol=1e-5)
    np.testing.assert_allclose(1 / (1 + np.exp(-mean)), scorer.score(q[None])[0], rtol=1e-5)
    # An agent created at runtime (after the fit) also draws from the prior.
    grown = scorer.with_features(_features(world, agents=4))
    assert grown.logit_posterior(q[None])[1][0, 3] == pytest.approx(3.0 * square + 3.0, rel=1e-5)
    old = NetworkScorer(_payload(None), features, "v0")  # models registered before Thompson sampling
    assert not old.has_posterior
    with pytest.raises(ValueError, match="posterior"):
        old.logit_posterior(q[None])


def test_thompson_explores_uncertain_requests_and_records_its_propensities(world: dict) -> None:
    embedder = _Embedder(world)
    router = _router(embedder)
    scorer = NetworkScorer(_payload({"delta_var": {}, "bias_var": {}, "prior_var": 0.3}), router.features, "v1")
    router.use_network(scorer)
    # Between domains a and b: the mean scores are close, so the posterior draws disagree often.
    text = embedder.add("between", (world["centers"][0] + world["centers"][1]) / np.sqrt(2))
    greedy = max(scorer.score(embedder.embed([text]))[0].tolist())
    decided = _decide(router, text, 1500)
    picks = Counter(d.agent for d in decided)
    best = next(a for a in "abc" if decided[0].scores[a] == max(decided[0].scores.values()))
    assert decided[0].scores[best] == pytest.approx(greedy, abs=1e-5)  # recorded scores stay the mean scores
    assert 0.05 < 1 - picks[best] / len(decided) < 0.95
    assert all(d.exploration == (d.agent != best) for d in decided)
    assert all(0 < d.propensity <= 1 for d in decided)
    for agent, count in picks.items():
        recorded = np.mean([d.propensity for d in decided if d.agent == agent])
        assert recorded == pytest.approx(count / len(decided), abs=0.04), agent


def test_thompson_with_near_zero_variance_is_greedy_and_old_models_explore_epsilon_greedy(world: dict) -> None:
    embedder = _Embedder(world)
    texts = [embedder.add(f"q{i}", _requests(world, i % 3, 1)[0]) for i in range(60)]
    greedy = _router(embedder, strategy="epsilon")
    sure = _router(embedder)
    tiny = {"delta_var": {}, "bias_var": {}, "prior_var": 1e-12}
    greedy.use_network(NetworkScorer(_payload(tiny), greedy.features, "v1"))
    sure.use_network(NetworkScorer(_payload(tiny), sure.features, "v1"))
    for text in texts:
        (expected,), (got,) = _decide(greedy, text, 1), _decide(sure, text, 1)
        assert (got.agent, got.exploration, got.propensity) == (expected.agent, False, 1.0)
    # No posterior in the payload: Thompson falls back to epsilon-greedy with SMOLIT_EXPLORATION's share.
    old = _router(embedder, exploration=0.5)
    old.use_network(NetworkScorer(_payload(None), old.features, "v0"))
    decided = [d for text in texts for d in _decide(old, text, 5)]
    assert {d.propensity for d in decided} <= {0.5 / 3, 0.5 + 0.5 / 3}
    assert 0.3 < np.mean([d.exploration for d in decided]) < 0.7


def test_thompson_keeps_the_fallback_rule_and_demotion(world: dict) -> None:
    """Below the model's threshold the fallback takes the request in the draws too; a flagged agent's drawn scores are
    demoted like its mean scores (factor 0: never sampled)."""
    embedder = _Embedder(world)
    router = _router(embedder)
    router.use_network(
        NetworkScorer(_payload({"delta_var": {}, "bias_var": {}, "prior_var": 0.3}, 0.999), router.features, "v1")
    )
    text = embedder.add("between", (world["centers"][0] + world["centers"][1]) / np.sqrt(2))
    assert {d.agent for d in _decide(router, text, 200)} == {"c"}
    strict = _router(embedder)
    strict.use_network(
        NetworkScorer(_payload({"delta_var": {}, "bias_var": {}, "prior_var": 0.3}), strict.features, "v1")
    )
    strict.states = _flag(strict, "a")
    decided = _decide(strict, text, 300)
    assert "a" not in {d.agent for d in decided}
    assert len({d.agent for d in decided}) == 2


def _flag(router: Router, agent: str):  # type: ignore[no-untyped-def]
    from smolit.contracts import AgentFlagged
    from smolit.router.demotion import AgentStates

    states = AgentStates("c", factor=0.0)
    states.handle([AgentFlagged(correlation_id=uuid.uuid4(), agent=agent, reason="test")])
    return states
