"""Every fact Smolit records, as frozen, versioned pydantic models.

Each event carries the envelope fields (`event_id`, `type`, `schema_version`, `occurred_at`, `correlation_id`,
`causation_id`, `producer`) followed by its payload fields. `type` is a stable string literal, never an import path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .agents import AgentCard
from .parts import Attachment, Clause, ModelUse, Source

E = TypeVar("E", bound="Event")


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Envelope shared by all events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: UUID = Field(default_factory=uuid4)
    """Unique id; consumers dedupe by it."""
    schema_version: int = 1
    """Version of this event's payload; older versions are upcast on read."""
    occurred_at: datetime = Field(default_factory=_now)
    """When the producer recorded the fact (UTC)."""
    correlation_id: UUID
    """The user request this event belongs to (for requests: their own id)."""
    causation_id: UUID | None = None
    """The event that caused this one."""
    producer: str = "smolit"
    """Service that produced the event."""

    def caused(self, event_cls: type[E], /, producer: str, **payload: Any) -> E:
        """Build the next event in this chain: same correlation id, causation = this event."""
        return event_cls(correlation_id=self.correlation_id, causation_id=self.event_id, producer=producer, **payload)


# ---- requests, routing, tasks ------------------------------------------------------------------------------


class RequestReceived(Event):
    type: Literal["RequestReceived"] = "RequestReceived"
    conversation_id: str = Field(min_length=1, max_length=200)
    """Conversation the request belongs to (Kafka key of the requests topic)."""
    text: str = Field(min_length=1)
    """The user's request."""
    user: str | None = None
    """Who asked, when known."""
    agent: str | None = None
    """Ask this agent directly instead of routing."""
    context: tuple[str, ...] = ()
    """Earlier user turns of the conversation, oldest first (the router embeds the last one with a follow-up)."""
    previous_agent: str | None = None
    """Agent that answered the previous turn (the router stays with it unless the topic clearly changes)."""
    allowed_agents: tuple[str, ...] | None = None
    """Agents the caller's API key may reach; the router scores only these. `None`: every agent."""
    embedding: str | None = None
    """The text's embedding (contracts.vectors wire form) when the gateway's prompt filter already computed it with
    the same embedder settings; the router then does not encode the text again. `None`: the router encodes it."""
    attachments: tuple[Attachment, ...] = ()
    """Images sent with the request; the answering agent reads them when its card has `pipeline.request: [ocr]`."""
    model_hints: dict[str, str] = Field(default_factory=dict)
    """Pipeline step -> registered model the caller asks the answering agent to use (e.g. `{"ocr":
    "smolit-ocr-upscale"}`); the agent follows it only for one of its card's candidates for that step."""

    @property
    def request_id(self) -> UUID:
        return self.correlation_id


class RoutingDecided(Event):
    type: Literal["RoutingDecided"] = "RoutingDecided"
    agent: str
    """Chosen agent."""
    scores: dict[str, float]
    """Score of every agent considered."""
    score: float
    """Score of the chosen agent."""
    model_version: str
    """Scorer that decided (e.g. `similarity-v1` or a registry version)."""
    low_confidence: bool = False
    """No specialised agent reached the threshold; the fallback took it."""
    exploration: bool = False
    """The choice was an exploration step, not the argmax."""
    propensity: float = 1.0
    """Probability with which the policy chose this agent."""
    latency_ms: float
    """Routing time for this request (embedding share included)."""
    embedding: str
    """Request embedding (contracts.vectors wire form), computed once by the router."""
    text: str = ""
    """The request text, so joins downstream (training examples) need not read the requests topic."""
    small_talk: str | None = None
    """The request was small talk of this kind (greeting, thanks, ...) and went to the fallback agent unscored."""
    context_used: bool = False
    """The follow-up was scored together with the previous turn of its conversation."""
    demoted: tuple[str, ...] = ()
    """Flagged agents whose scores were demoted before this decision (`scores` are the demoted ones)."""
    experiment_id: str | None = None
    """Router A/B test this request's conversation took part in (`smolit ab start`); `None`: no test running."""
    arm: str | None = None
    """`control` (champion) or `treatment` (the tested version), from a hash of the conversation id."""
    model_hints: dict[str, str] = Field(default_factory=dict)
    """Which internal model the chosen agent should use per pipeline step (the request's own hints)."""


class TaskAssigned(Event):
    type: Literal["TaskAssigned"] = "TaskAssigned"
    agent: str
    """Agent that must answer (Kafka key of the tasks topic)."""
    text: str
    """The request text."""
    conversation_id: str
    embedding: str
    """Request embedding, so agents never re-embed."""
    deadline: datetime | None = None
    """After this the answer is no longer awaited."""
    scores: dict[str, float] = Field(default_factory=dict)
    """The router's score of every agent for the whole request (empty in events from before it was added)."""
    clauses: tuple[Clause, ...] = ()
    """Parts of a compound request with their own embeddings and scores; empty for a single question."""
    small_talk: str | None = None
    """Kind of small talk (greeting, thanks, wellbeing, farewell, ack): a short reply, no knowledge-base search."""
    context: tuple[str, ...] = ()
    """Earlier turn(s) the router scored this follow-up with (and embedded into `embedding`); the agent answers
    the follow-up together with them."""
    attachments: tuple[Attachment, ...] = ()
    """The request's attachments, passed on by the router."""
    model_hints: dict[str, str] = Field(default_factory=dict)
    """The router's hint of which internal model to use per pipeline step (`RoutingDecided.model_hints`)."""


class SubqueryRequested(Event):
    type: Literal["SubqueryRequested"] = "SubqueryRequested"
    from_agent: str
    agent: str
    """Agent asked (Kafka key of the subqueries topic)."""
    text: str
    parent_event_id: UUID
    """Task or subquery that asked."""
    depth: int = Field(ge=1)
    deadline: datetime | None = None
    budget: int = Field(default=1, ge=0)
    """How many further subqueries the answer may spend."""
    chain: tuple[str, ...] = ()
    """Agents already in this chain of questions, first asker first (the loop guard refuses to ask them again)."""
    embedding: str | None = None
    """Embedding of `text` (the clause's, computed by the router); `None`: the asked agent embeds nothing and
    retrieves nothing."""


# ---- answers -----------------------------------------------------------------------------------------------


class AnswerProduced(Event):
    type: Literal["AnswerProduced"] = "AnswerProduced"
    agent: str
    answer: str
    sources: tuple[Source, ...] = ()
    backend: str
    """LLM backend that wrote the answer."""
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float
    """Agent time from task receipt to answer."""
    cache_hit: bool = False
    """The LLM completion came from the cache of identical calls."""
    subqueries: int = 0
    """Subqueries this answer asked of other agents."""
    card_version: int | None = None
    """Version of the agent card that answered (`None`: from before versions were recorded)."""
    experiment_id: str | None = None
    """The agent test (`smolit ab start --agent`) or learner challenger trial whose split this conversation was in."""
    arm: str | None = None
    """`control` (the champion card answered) or `treatment` (the variant or challenger card answered)."""
    models: tuple[ModelUse, ...] = ()
    """Pipeline models that ran for this answer (e.g. OCR of the request's attachments), with their versions."""


class SubqueryAnswered(Event):
    type: Literal["SubqueryAnswered"] = "SubqueryAnswered"
    agent: str
    subquery_event_id: UUID
    answer: str
    sources: tuple[Source, ...] = ()
    latency_ms: float
    error: str | None = None
    """Set when the asked agent could not answer (unknown agent, loop guard, LLM down); `answer` is then empty.
    A failed subquery is reported here, not as `TaskFailed`, so it never reads as the user request failing."""
    backend: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class TaskFailed(Event):
    type: Literal["TaskFailed"] = "TaskFailed"
    agent: str
    reason: str
    """Human-readable cause."""
    retryable: bool = False
    card_version: int | None = None
    """Version of the agent card that failed (`None`: before a card was chosen, or from before versions)."""
    experiment_id: str | None = None
    """As in `AnswerProduced`: the trial whose split the conversation was in (a failing variant counts against it)."""
    arm: str | None = None


# ---- feedback, metrics, learning ---------------------------------------------------------------------------


class FeedbackGiven(Event):
    type: Literal["FeedbackGiven"] = "FeedbackGiven"
    rating: int = Field(ge=-1, le=5)
    """-1/+1 thumbs, or 1–5 stars."""
    comment: str | None = None
    user: str | None = None
    scale: Literal["thumbs", "stars"] | None = None
    """How to read `rating` (a rating of 1 is a thumbs-up but a one-star review). None: thumbs for -1/+1,
    stars for 2–5 (what producers before this field meant)."""
    preferred_agent: str | None = None
    """Corrective feedback: the agent that should have answered."""
    inferred_by: ModelUse | None = None
    """Set when the user gave only a comment: the registered model (step `sentiment`, name, version) that inferred
    `rating` from it. `None`: the user gave the rating."""
    inferred_confidence: float | None = Field(default=None, ge=0, le=1)
    """Probability the model gave the inferred rating's label."""

    @model_validator(mode="after")
    def _rating_fits_scale(self) -> FeedbackGiven:
        if self.scale == "thumbs" and self.rating not in (-1, 1):
            raise ValueError("a thumbs rating is -1 or +1")
        if self.scale == "stars" and not 1 <= self.rating <= 5:
            raise ValueError("a star rating is 1 to 5")
        return self

    @property
    def sentiment(self) -> Literal["positive", "neutral", "negative"]:
        """Thumbs up or 4–5 stars are positive; thumbs down or 1–2 stars negative; 3 stars (or 0) neutral."""
        scale = self.scale or ("thumbs" if self.rating in (-1, 1) else "stars")
        if scale == "thumbs":
            return "positive" if self.rating > 0 else "negative" if self.rating < 0 else "neutral"
        return "positive" if self.rating >= 4 else "negative" if self.rating in (1, 2) else "neutral"


class AgentMetricsWindow(Event):
    type: Literal["AgentMetricsWindow"] = "AgentMetricsWindow"
    agent: str
    """Agent the window describes (`unknown` for agents not in the catalogue)."""
    window_start: datetime
    window_end: datetime
    window_kind: Literal["tumbling", "hopping"] = "tumbling"
    """Tumbling (disjoint) or hopping (overlapping) window; the size is `window_end - window_start`."""
    requests: int = 0
    answers: int = 0
    failures: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    feedback_count: int = 0
    mean_rating: float | None = None
    negative_rate: float | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    subqueries_sent: int = 0
    subqueries_received: int = 0
    mean_routing_score: float | None = None
    """Mean router score of the requests routed to this agent (routing confidence)."""


class TrainingExample(Event):
    type: Literal["TrainingExample"] = "TrainingExample"
    text: str
    embedding: str
    agent: str
    scores: dict[str, float]
    rating: int | None = None
    failed: bool = False
    latency_ms: float | None = None
    propensity: float = 1.0
    positive: bool | None = None
    """Outcome for the chosen agent: feedback sentiment, False for a failure or timeout, None when neutral/unknown."""
    preferred_agent: str | None = None
    """Corrective feedback: the agent that should have answered."""
    model_version: str | None = None
    """Router model that made the decision (live quality per champion, for automatic rollback)."""
    card_version: int | None = None
    """Agent card version that answered (from `AnswerProduced`/`TaskFailed`), so each version of an agent is judged
    on its own outcomes while a challenger shares its traffic."""


class RouterModelPromoted(Event):
    type: Literal["RouterModelPromoted"] = "RouterModelPromoted"
    registry_name: str
    version: str
    alias: str = "champion"
    previous_version: str | None = None
    """Champion this version replaces (what a rollback restores)."""


class ModelPromoted(Event):
    """A registered pipeline model (OCR, ...) has a new version behind an alias; model managers swap to it.

    The router's own promotions keep `RouterModelPromoted`; this one is for every other registered model."""

    type: Literal["ModelPromoted"] = "ModelPromoted"
    registry_name: str
    """Registered model name (`smolit models list`)."""
    version: str
    """Version that now holds `alias`."""
    alias: str = "champion"
    previous_version: str | None = None
    """Version that held the alias before (what a rollback restores)."""


class RolledBack(Event):
    type: Literal["RolledBack"] = "RolledBack"
    registry_name: str
    version: str
    """Version restored."""
    from_version: str
    reason: str
    evidence: dict[str, float] = Field(default_factory=dict)
    """The live numbers behind an automatic rollback (good/judged outcomes per version, z score, alpha); empty
    for a manual one."""


class ExperimentStarted(Event):
    type: Literal["ExperimentStarted"] = "ExperimentStarted"
    experiment_id: str
    kind: Literal["router", "agent"] = "router"
    """What is tested: a router model version, or an agent card variant."""
    router_version: str | None = None
    """Registry version serving the treatment arm (the champion serves control); router tests only."""
    agent: str | None = None
    """Agent whose conversations are split; agent tests only."""
    variant: AgentCard | None = None
    """The card answering the treatment arm (the agent's card with the variant file's overrides); agent tests only."""
    registry_name: str = "smolit-router"
    share: float = Field(gt=0, lt=1)
    """Fraction of conversations in the treatment arm."""


class ExperimentStopped(Event):
    type: Literal["ExperimentStopped"] = "ExperimentStopped"
    experiment_id: str
    reason: str = "operator"
    decision: str
    """`treatment better`, `treatment worse` or `no significant difference`."""
    results: dict[str, float] = Field(default_factory=dict)
    """Per-arm judged counts and positive rates, z score and p-value at the time of stopping."""


class AgentCreated(Event):
    type: Literal["AgentCreated"] = "AgentCreated"
    card: AgentCard
    proposal_id: str | None = None
    """The `AgentProposed` this agent was created from (auto mode or `smolit agents approve`); `None`: by hand."""
    knowledge: tuple[str, ...] = ()
    """Sources of knowledge-pool documents the new agent takes over into its own collection."""


class AgentProposed(Event):
    type: Literal["AgentProposed"] = "AgentProposed"
    proposal_id: str = Field(min_length=1, max_length=64)
    """Short id an operator approves (`smolit agents approve ID`)."""
    card: AgentCard
    """The proposed agent: name and description from the cluster's top terms (or the LLM, see `named_by`), its
    requests as examples, a system prompt built from them."""
    knowledge: tuple[str, ...] = ()
    """Knowledge-pool document sources matching the cluster (taken over when the agent is created)."""
    centroid: str
    """Normalised mean embedding of the cluster (contracts.vectors wire form): later clusters this close to it
    are the same topic and are not proposed again."""
    size: int = Field(ge=1)
    """Low-confidence requests in the cluster."""
    cohesion: float
    """Mean pairwise cosine similarity of the cluster's requests."""
    terms: tuple[str, ...] = ()
    """Top terms of the cluster against the window (what the name and description come from)."""
    nearest_agent: str | None = None
    """Existing agent whose card is closest to the cluster, and how close (below the no-clone threshold)."""
    nearest_similarity: float | None = None
    named_by: str = "terms"
    """Who named and described the agent: `terms` (the cluster's top terms) or `llm:<model>` (the configured LLM,
    from the cluster's requests; `SMOLIT_DISCOVERY_NAMING`)."""


class AgentUpdated(Event):
    type: Literal["AgentUpdated"] = "AgentUpdated"
    card: AgentCard
    share: float | None = Field(default=None, gt=0, lt=1)
    """Set: `card` is a challenger that answers this hash-chosen share of the agent's conversations next to the
    current card (the champion). `None`: `card` replaces the agent's card (edit, promotion, rollback) and ends any
    challenger."""


class AgentFlagged(Event):
    type: Literal["AgentFlagged"] = "AgentFlagged"
    agent: str
    reason: str
    """Human-readable cause, with the numbers that decided it."""
    evidence: dict[str, float] = Field(default_factory=dict)
    """The rule's inputs and outputs: counts, rates, confidence bounds and the threshold they were compared with."""
    rule: str = ""
    """Rule that decided (e.g. `wilson-negative-rate-v1`); empty for flags from before it was recorded."""
    card_version: int | None = None
    """Version of the agent's card the evidence was gathered on."""
    proposed_actions: tuple[Literal["challenger", "retire"], ...] = ()
    """Improvement steps the learner proposed or took: `challenger` (an `AgentUpdated` with new retrieval settings
    follows), `retire` (an operator should run `smolit agents retire`)."""


class AgentUnflagged(Event):
    type: Literal["AgentUnflagged"] = "AgentUnflagged"
    agent: str
    reason: str
    """`operator` for `smolit agents unflag`, otherwise the rule's words."""
    evidence: dict[str, float] = Field(default_factory=dict)
    """The rule's numbers when the learner cleared the flag; empty for an operator's decision."""


class AgentRetired(Event):
    type: Literal["AgentRetired"] = "AgentRetired"
    agent: str
    reason: str


# ---- security and audit ------------------------------------------------------------------------------------


class RequestBlocked(Event):
    type: Literal["RequestBlocked"] = "RequestBlocked"
    reason: str
    """Stable reason code, e.g. `injection_rule`, `injection_similarity`, `moderation`."""
    detail: str = ""
    """Which rule or pattern matched (never the secret of a key)."""
    score: float | None = None
    """Similarity to the nearest known pattern, for similarity blocks."""
    text: str
    """The blocked request text (kept for review; cut to 2,000 characters)."""
    key_id: str | None = None
    """API key that sent it, when one did."""
    client: str | None = None
    """Client address for anonymous requests."""


class ToolCalled(Event):
    type: Literal["ToolCalled"] = "ToolCalled"
    agent: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    """Arguments as validated (or as received, when validation failed)."""
    result: dict[str, Any] | None = None
    outcome: Literal["ok", "invalid_args", "not_allowed", "timeout", "error"]
    error: str | None = None
    duration_ms: float
    trigger: Literal["llm", "pattern"] = "llm"
    """Who asked for the call: the model's tool call, or the offline backend's deterministic pattern."""


class DeadLetter(Event):
    type: Literal["DeadLetter"] = "DeadLetter"
    error: str
    """Why the message could not be processed."""
    source_topic: str
    source_partition: int
    source_offset: int
    consumer_group: str
    raw_value: str | None
    """Original value, base64."""
    raw_key: str | None
    headers: dict[str, str] = Field(default_factory=dict)


class ModelOutcomeRecorded(Event):
    """How one candidate model of an agent's pipeline did on one input (the "model memory" of model selection).

    Written when a pipeline step has run (e.g. OCR at ingestion); the selector's projection keeps a success rate
    per (model, task features) so later inputs that look alike go to the model that did well on them.
    """

    type: Literal["ModelOutcomeRecorded"] = "ModelOutcomeRecorded"
    model: str
    """Registered model name of the candidate that ran (e.g. `smolit-ocr-upscale`)."""
    step: str = "ocr"
    """Pipeline subtask the model ran for."""
    agent: str | None = None
    """Agent whose pipeline ran it (`None`: the knowledge pool)."""
    features: dict[str, str] = Field(default_factory=dict)
    """Task features the selector buckets on (e.g. `font`: `small`, `orientation`: `upside-down`, `format`: `png`)."""
    success: bool = False
    """Validation outcome: the output passed the step's plausibility check and every applicable check."""
    checks: dict[str, bool] = Field(default_factory=dict)
    """Post-processing checks that applied and their result (e.g. `amounts`: an invoice's lines add up)."""
    confidence: float | None = None
    """The model's own mean confidence on this input (OCR: character-weighted recogniser confidence)."""
    seconds: float | None = None
    """How long the model took on this input."""
    source: str | None = None
    """The input it ran on (file name), for audit."""
    selected_by: str = "selector"
    """Why this model ran: `selector`, `only-candidate`, `bench` (a benchmark ran every candidate), `manager`
    (the model manager's current version read a request attachment) or `hint` (the request's model hint)."""
    version: str | None = None
    """Registry version that ran, when the model manager resolved it (`None`: not resolved through the registry)."""


AnyEvent = Annotated[
    RequestReceived
    | RoutingDecided
    | TaskAssigned
    | SubqueryRequested
    | AnswerProduced
    | SubqueryAnswered
    | TaskFailed
    | FeedbackGiven
    | AgentMetricsWindow
    | TrainingExample
    | RouterModelPromoted
    | ModelPromoted
    | RolledBack
    | ExperimentStarted
    | ExperimentStopped
    | AgentCreated
    | AgentProposed
    | AgentUpdated
    | AgentFlagged
    | AgentUnflagged
    | AgentRetired
    | RequestBlocked
    | ToolCalled
    | ModelOutcomeRecorded
    | DeadLetter,
    Field(discriminator="type"),
]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        RequestReceived,
        RoutingDecided,
        TaskAssigned,
        SubqueryRequested,
        AnswerProduced,
        SubqueryAnswered,
        TaskFailed,
        FeedbackGiven,
        AgentMetricsWindow,
        TrainingExample,
        RouterModelPromoted,
        ModelPromoted,
        RolledBack,
        ExperimentStarted,
        ExperimentStopped,
        AgentCreated,
        AgentProposed,
        AgentUpdated,
        AgentFlagged,
        AgentUnflagged,
        AgentRetired,
        RequestBlocked,
        ToolCalled,
        ModelOutcomeRecorded,
        DeadLetter,
    )
}
