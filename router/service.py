"""Router service: `RequestReceived` batches in, `RoutingDecided` + `TaskAssigned` out."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, Info

from smolit.contracts import (
    TREATMENT,
    AgentCard,
    Clause,
    Event,
    Experiments,
    ExperimentStarted,
    ModelPromoted,
    RequestReceived,
    RolledBack,
    RoutingDecided,
    TaskAssigned,
    TaskFailed,
    Topic,
    arm,
    pack_vector,
    unpack_vector,
)
from smolit.infra.db import EMBEDDING_DIM
from smolit.infra.kafka import Outgoing

from .clauses import split_clauses
from .demotion import AgentStates, demote, without
from .features import AgentFeatures
from .policy import Decision, decide
from .scoring import SimilarityScorer, TextEmbedder
from .smalltalk import small_talk_kind

if TYPE_CHECKING:
    from .network import NetworkScorer

log = structlog.get_logger("smolit.router")
PRODUCER = "router"


THOMPSON_DRAWS = 256
"""Monte-Carlo draws per request that estimate a Thompson pick's propensity (its share of draws it wins)."""

ExplorationStrategy = Literal["epsilon", "thompson"]

TOPIC_CHANGE_MARGIN = 0.1
"""A follow-up leaves its conversation's agent only when its own text scores another agent this far above the
routing threshold (a clear new topic); see `follow_up`."""


def follow_up(
    alone: Decision,
    joint: Decision,
    previous: str | None,
    joint_scores: Mapping[str, float],
    *,
    fallback: str,
    topic_change: float,
) -> Decision:
    """Route a follow-up turn. `alone`: the decision on its own text; `joint`: on the previous turn + its text.

    A clear new topic (its own text picks a specialised agent at `topic_change` or more) keeps `alone`. Otherwise
    the joint text decides, and when even that is unsure the conversation stays with the previous agent.
    """
    if alone.agent != fallback and alone.score >= topic_change and alone.agent != previous:
        return alone
    if previous is not None and previous in joint_scores and joint.low_confidence:
        return Decision(previous, joint_scores[previous], low_confidence=False)
    return joint


class UnexpectedEvent(TypeError):
    """An event of the wrong type arrived on the requests topic."""


class RouterMetrics(NamedTuple):
    decisions: Counter
    low_confidence: Counter
    routing_seconds: Histogram
    model: Info

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RouterMetrics:
        return cls(
            decisions=Counter("smolit_routing_decisions_total", "Routing decisions", ["agent"], registry=registry),
            low_confidence=Counter(
                "smolit_routing_low_confidence_total",
                "Requests sent to the fallback agent",
                registry=registry,
            ),
            routing_seconds=Histogram(
                "smolit_routing_seconds",
                "Embedding + scoring time per batch",
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            ),
            model=Info("smolit_router_model", "Scorer deciding the routes (version label)", registry=registry),
        )


class Router:
    """Embeds a batch of requests once, scores every agent, applies the policy."""

    def __init__(
        self,
        cards: Mapping[str, AgentCard],
        embedder: TextEmbedder,
        *,
        fallback: str,
        threshold: float,
        metrics: RouterMetrics,
        exploration: float = 0.0,
        seed: int | None = None,
        states: AgentStates | None = None,
        strategy: ExplorationStrategy = "epsilon",
    ) -> None:
        """`exploration`: epsilon-greedy's share; `strategy` "thompson" samples each network routing from the model's
        posterior instead (models without posterior variances fall back to epsilon-greedy)."""
        if fallback not in cards:
            raise ValueError(f"fallback agent {fallback!r} has no card (setting SMOLIT_FALLBACK_AGENT)")
        self._embedder = embedder
        self._scorer = SimilarityScorer(cards, embedder)
        self._network: NetworkScorer | None = None
        self._fallback = fallback
        self._threshold = threshold
        self._exploration = exploration
        self._rng = random.Random(seed)
        self._strategy = strategy
        self._np_rng = np.random.default_rng(seed)
        self._metrics = metrics
        self.states = states or AgentStates(fallback)
        self._experiment: tuple[ExperimentStarted, NetworkScorer] | None = None
        metrics.model.info({"version": self._scorer.version})

    @property
    def features(self) -> AgentFeatures:
        """The agents and prototypes this router scores (network scorers are built over the same ones)."""
        return self._scorer.features

    @property
    def network(self) -> NetworkScorer | None:
        return self._network

    @property
    def model_version(self) -> str:
        return self._network.version if self._network is not None else self._scorer.version

    def use_cards(self, cards: Mapping[str, AgentCard]) -> None:
        """Score these agents from the next batch on (agents created or updated at runtime): their prototypes are
        embedded now, and a routing network in use keeps its weights over the new agent set (a new agent starts
        from its card vector and similarity prior, no retraining)."""
        if self._fallback not in cards:
            raise ValueError(f"fallback agent {self._fallback!r} has no card")
        scorer = SimilarityScorer(cards, self._embedder)
        network = self._network
        self._network = network.with_features(scorer.features) if network is not None else None
        if self._experiment is not None:
            started, treatment = self._experiment
            self._experiment = (started, treatment.with_features(scorer.features))
        self._scorer = scorer
        log.info("agents in use", agents=scorer.agents)

    def use_network(self, network: NetworkScorer | None) -> None:
        """Hot swap: the next batch routes with `network` (None: back to similarity). One reference assignment,
        so a batch in flight finishes with the model it started with."""
        self._network = network
        self._metrics.model.info({"version": self.model_version})
        log.info("routing model in use", version=self.model_version)

    @property
    def experiment(self) -> tuple[ExperimentStarted, NetworkScorer] | None:
        return self._experiment

    def use_experiment(self, started: ExperimentStarted | None, treatment: NetworkScorer | None = None) -> None:
        """A/B test: from the next batch on, conversations in the treatment arm route with `treatment`, the others
        with the champion (None: the test ended, everyone routes with the champion)."""
        self._experiment = (started, treatment) if started is not None and treatment is not None else None
        log.info("experiment in use", experiment_id=self._experiment[0].experiment_id if self._experiment else None)

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        requests = []
        for event in events:
            if not isinstance(event, RequestReceived):
                raise UnexpectedEvent(f"router expects RequestReceived, got {event.type}")  # type: ignore[attr-defined]
            requests.append(event)
        started = time.perf_counter()
        scorer = self._scorer  # one agent set for the whole batch, even if a catalogue change lands meanwhile
        # Clauses of compound requests and follow-ups joined with their previous turn are embedded in the same
        # batch: one encoder call per batch.
        split = [split_clauses(r.text) for r in requests]
        kinds = [small_talk_kind(r.text) if r.agent is None else None for r in requests]
        # Follow-ups are also scored with the previous topical turn (earlier small talk is no topic).
        previous_turn = {
            i: turn
            for i, r in enumerate(requests)
            if r.agent is None
            and kinds[i] is None
            and (turn := next((c for c in reversed(r.context) if small_talk_kind(c) is None), None))
        }
        joint = list(previous_turn)
        extra = [c for clauses in split for c in clauses]
        extra += [f"{previous_turn[i]}\n{requests[i].text}" for i in joint]
        # Requests whose embedding the gateway's prompt filter already computed are not encoded again.
        vectors = self._embed(requests, extra)
        scored = scorer.score_dicts(vectors)
        all_clauses: list[tuple[Clause, ...]] = []
        row = len(requests)
        for clauses in split:
            rows = range(row, row + len(clauses))
            all_clauses.append(
                tuple(
                    Clause(text=t, embedding=pack_vector(vectors[i].tolist()), scores=scored[i])
                    for t, i in zip(clauses, rows, strict=True)
                )
            )
            row += len(clauses)
        joint_rows = {i: row + n for n, i in enumerate(joint)}
        network = self._network  # one model for the whole batch, even if a swap lands meanwhile
        if network is not None:  # clauses keep their similarity scores (the consult threshold is a similarity)
            rows = [*range(len(requests)), *joint_rows.values()]
            for r, probs in zip(rows, network.score(vectors[rows]), strict=True):
                scored[r] = {a: round(float(p), 6) for a, p in zip(network.agents, probs, strict=True)}
        threshold = network.threshold if network is not None else self._threshold
        version = network.version if network is not None else scorer.version
        experiment = self._experiment  # one test for the whole batch, like the model
        arms: list[str | None] = [None] * len(requests)
        if experiment is not None:
            test, treatment = experiment
            arms = [arm(r.conversation_id, test.experiment_id, test.share) for r in requests]
            treated = [n for n, a in enumerate(arms) if a == TREATMENT]
            treated_rows = [*treated, *(joint_rows[n] for n in treated if n in joint_rows)]
            if treated_rows:
                for r, probs in zip(treated_rows, treatment.score(vectors[treated_rows]), strict=True):
                    scored[r] = {a: round(float(p), 6) for a, p in zip(treatment.agents, probs, strict=True)}
        elapsed = time.perf_counter() - started
        self._metrics.routing_seconds.observe(elapsed)
        outputs: list[Outgoing] = []
        flagged, retired, factor = self.states.flagged, self.states.retired, self.states.factor  # one view per batch
        posteriors: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per model, every row's at once (Thompson)
        for n, (request, clauses) in enumerate(zip(requests, all_clauses, strict=True)):
            if request.agent is not None and request.agent in retired:
                outputs.append(self._refuse_retired(request))
                continue
            vector, scores = vectors[n], scored[n]
            if retired:  # never routed to, explored or consulted
                scores = without(scores, retired)
                if n in joint_rows:
                    scored[joint_rows[n]] = without(scored[joint_rows[n]], retired)
                clauses = tuple(c.model_copy(update={"scores": without(c.scores, retired)}) for c in clauses)
            if request.allowed_agents is not None:
                # A restricted API key: only its agents are considered (the gateway never sends an empty list).
                allowed = set(request.allowed_agents)
                scores = {a: s for a, s in scores.items() if a in allowed}
                if n in joint_rows:
                    scored[joint_rows[n]] = {a: s for a, s in scored[joint_rows[n]].items() if a in allowed}
                # Clause scores drive agent-to-agent consults: a restricted key must not reach others that way.
                clauses = tuple(
                    c.model_copy(update={"scores": {a: s for a, s in c.scores.items() if a in allowed}})
                    for c in clauses
                )
                if not scores:
                    log.warning("no allowed agent is known; request dropped", request_id=str(request.request_id))
                    continue
            scores = demote(scores, flagged, factor)  # the scores the decision is made on (and recorded)
            treated_now = experiment is not None and arms[n] == TREATMENT
            req_threshold = experiment[1].threshold if experiment is not None and treated_now else threshold
            req_version = experiment[1].version if experiment is not None and treated_now else version
            decision = decide(scores, fallback=self._fallback, threshold=req_threshold, requested=request.agent)
            context_used = False
            if n in joint_rows:
                alone = decision
                j = joint_rows[n]
                joint_scores = demote(scored[j], flagged, factor)
                decision = follow_up(
                    alone,
                    decide(joint_scores, fallback=self._fallback, threshold=req_threshold),
                    request.previous_agent,
                    joint_scores,
                    fallback=self._fallback,
                    topic_change=req_threshold + TOPIC_CHANGE_MARGIN,
                )
                if decision is not alone:
                    vector, scores, context_used = vectors[j], joint_scores, True
            if kinds[n] is not None:  # small talk: the fallback agent replies briefly, whatever the scores
                decision = Decision(self._fallback, scores.get(self._fallback, 0.0), low_confidence=False)
            exploration, propensity = False, 1.0
            if network is not None and request.agent is None and kinds[n] is None:
                model = experiment[1] if experiment is not None and treated_now else network
                if self._strategy == "thompson" and model.has_posterior:
                    if id(model) not in posteriors:
                        posteriors[id(model)] = model.logit_posterior(vectors)
                    mean, variance = posteriors[id(model)]
                    at = joint_rows[n] if context_used else n
                    decision, exploration, propensity = self._thompson(
                        decision,
                        scores,
                        model.agents,
                        mean[at],
                        variance[at],
                        flagged=flagged,
                        factor=factor,
                        threshold=req_threshold,
                    )
                elif self._exploration > 0:
                    decision, exploration, propensity = self._explore(decision, scores)
            packed = pack_vector(vector.tolist())
            decided = request.caused(
                RoutingDecided,
                producer=PRODUCER,
                agent=decision.agent,
                scores=scores,
                score=decision.score,
                model_version=req_version,
                low_confidence=decision.low_confidence,
                exploration=exploration,
                propensity=propensity,
                latency_ms=elapsed * 1000,
                embedding=packed,
                text=request.text,
                small_talk=kinds[n],
                context_used=context_used,
                demoted=tuple(sorted(flagged & scores.keys())),
                experiment_id=experiment[0].experiment_id if experiment is not None else None,
                arm=arms[n],
                model_hints=request.model_hints,
            )
            task = decided.caused(
                TaskAssigned,
                producer=PRODUCER,
                agent=decision.agent,
                text=request.text,
                conversation_id=request.conversation_id,
                embedding=packed,
                scores=scores,
                clauses=() if kinds[n] else clauses,
                small_talk=kinds[n],
                context=(previous_turn[n],) if context_used else (),
                attachments=request.attachments,
                model_hints=request.model_hints,
            )
            outputs += [
                Outgoing(Topic.DECISIONS, str(request.request_id), decided),
                Outgoing(Topic.TASKS, decision.agent, task),
            ]
            self._metrics.decisions.labels(decision.agent).inc()
            if decision.low_confidence:
                self._metrics.low_confidence.inc()
            log.info(
                "routed",
                request_id=str(request.request_id),
                agent=decision.agent,
                score=round(decision.score, 4),
                low_confidence=decision.low_confidence,
                small_talk=kinds[n],
                context_used=context_used,
            )
        return outputs

    def _refuse_retired(self, request: RequestReceived) -> Outgoing:
        """A request naming a retired agent fails at once, saying why (the gateway answers it as failed)."""
        failed = request.caused(
            TaskFailed,
            producer=PRODUCER,
            agent=request.agent or "",
            reason=f"agent {request.agent!r} is retired; ask without naming an agent, or name another one",
        )
        log.info("refused: agent retired", request_id=str(request.request_id), agent=request.agent)
        return Outgoing(Topic.ANSWERS, str(request.request_id), failed)

    def _embed(self, requests: Sequence[RequestReceived], clauses: list[str]) -> np.ndarray:
        """Rows: each request's vector (its own when valid, else encoded), then each clause's."""
        given = [_given_vector(r.embedding) for r in requests]
        if all(v is None for v in given):
            return self._embedder.embed([r.text for r in requests] + clauses)
        texts = [r.text for r, v in zip(requests, given, strict=True) if v is None] + clauses
        fresh = iter(self._embedder.embed(texts) if texts else ())
        rows = [v if v is not None else next(fresh) for v in given]
        return np.vstack(rows + list(fresh))

    def _explore(self, greedy: Decision, scores: Mapping[str, float]) -> tuple[Decision, bool, float]:
        """Epsilon-greedy: with probability epsilon a uniformly random agent; returns the choice's propensity."""
        agents = sorted(scores)
        share = self._exploration / len(agents)
        if self._rng.random() >= self._exploration:
            return greedy, False, 1 - self._exploration + share
        pick = self._rng.choice(agents)
        propensity = share + (1 - self._exploration) * (pick == greedy.agent)
        if pick == greedy.agent:
            return greedy, True, propensity
        return Decision(pick, scores[pick], low_confidence=False), True, propensity

    def _thompson(
        self,
        greedy: Decision,
        scores: Mapping[str, float],
        model_agents: Sequence[str],
        mean: np.ndarray,
        variance: np.ndarray,
        *,
        flagged: frozenset[str],
        factor: float,
        threshold: float,
    ) -> tuple[Decision, bool, float]:
        """Thompson sampling: logits drawn from the model's posterior, demoted and decided like the mean scores
        (threshold and fallback included); the propensity is the share of `THOMPSON_DRAWS` further draws that
        make the same pick (at least 1/draws). `mean`, `variance`: the model's logits and their posterior variances
        over `model_agents`; only the agents in `scores` (not retired, allowed) compete."""
        agents = sorted(scores)
        index = {a: i for i, a in enumerate(model_agents)}
        if any(a not in index for a in agents):  # scores from another agent set: no posterior to draw from
            return greedy, False, 1.0
        columns = [index[a] for a in agents]
        logits = mean[columns] + np.sqrt(variance[columns]) * self._np_rng.standard_normal(
            (THOMPSON_DRAWS + 1, len(agents))
        )
        probs = 1.0 / (1.0 + np.exp(-logits))
        probs[:, [a in flagged for a in agents]] *= factor  # the demotion greedy scores get (`demote`)
        best = probs.argmax(axis=1)  # ties go to the first name, as in `decide`
        low = probs[np.arange(len(probs)), best] < threshold
        picks = best.copy()
        if self._fallback in scores:
            fallback = agents.index(self._fallback)
            picks[low & (best != fallback)] = fallback
        propensity = max(float(np.mean(picks[1:] == picks[0])), 1.0 / THOMPSON_DRAWS)
        pick = agents[int(picks[0])]
        if pick == greedy.agent:
            return greedy, False, propensity
        return Decision(pick, scores[pick], low_confidence=bool(low[0])), True, propensity


def _given_vector(packed: str | None) -> np.ndarray | None:
    """A request's own embedding when it has the encoder's width; anything else is re-encoded."""
    if packed is None:
        return None
    try:
        vector = np.asarray(unpack_vector(packed), dtype=np.float32)
    except ValueError:
        return None
    return vector if vector.shape == (EMBEDDING_DIM,) else None


class ModelWatcher:
    """Router-models topic handler: on a promotion or rollback, load the registry's champion and swap it in; on an
    A/B test start or stop, load the tested version for the treatment arm or drop it."""

    def __init__(
        self,
        router: Router,
        load_champion: Callable[[], NetworkScorer | None],
        load_version: Callable[[str], NetworkScorer] | None = None,
        registry_name: str | None = None,
    ) -> None:
        self._router = router
        self._registry_name = registry_name
        """The router's registered model: rollbacks of other models (`smolit models rollback NAME`) are not ours."""
        self._load = load_champion
        self._load_version = load_version
        self.experiments = Experiments()

    def refresh(self) -> None:
        network = self._load()
        current = self._router.network
        if network is None and current is None:
            return
        if network is not None and current is not None and network.version == current.version:
            return
        self._router.use_network(network)

    def handle(self, events: Sequence[Event]) -> list[Outgoing]:
        # Other registered models' promotions share the topic; they never need the router's registry opened.
        events = [
            e
            for e in events
            if not isinstance(e, ModelPromoted)
            and not (isinstance(e, RolledBack) and self._registry_name not in (None, e.registry_name))
        ]
        if events:
            self.refresh()  # the registry's alias is the truth; the events only say when to look
            self._follow_experiments(events)
        return []

    def _follow_experiments(self, events: Sequence[Event]) -> None:
        if self._load_version is None:
            return
        before = self.experiments.running_of("router")
        self.experiments.apply(events)
        running = self.experiments.running_of("router")
        if (running and running.experiment_id) == (before and before.experiment_id):
            return  # no change (also when the loop re-reads what the start-up replay already applied)
        if running is None or running.router_version is None:
            self._router.use_experiment(None)
            return
        try:
            treatment = self._load_version(running.router_version)
        except Exception:  # a version deleted since `ab start` checked it: keep routing everyone with the champion
            log.exception("experiment version not loadable", version=running.router_version)
            self._router.use_experiment(None)
            return
        self._router.use_experiment(running, treatment)
