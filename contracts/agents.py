"""Agent cards: what an agent is for, where its knowledge lives and how it talks to its LLM."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class LLMConfig(BaseModel):
    """Per-agent LLM settings; `None` means the service-wide default from settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["extractive", "openai"] | None = None
    """Which LLM port implementation answers for this agent."""
    model: str | None = None
    """Chat model name for the `openai` backend."""
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    """Sampling temperature."""
    max_tokens: int = Field(default=400, ge=1, le=32_000)
    """Longest answer in tokens."""
    system_prompt: str = "You answer questions using only the provided passages and cite them as [n]."
    """System prompt: the agent's specialisation in words."""
    fallback_backend: Literal["extractive", "openai"] | None = None
    """Backend that answers when `backend` stays unavailable after its retries (e.g. `extractive`); `None`: fail."""
    cache: bool = True
    """Reuse the completion of an identical earlier call (same backend, model, prompt and parameters)."""


class RetrievalConfig(BaseModel):
    """How the agent searches its knowledge collection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    top_k: int | None = Field(default=None, ge=1, le=50)
    """Passages to retrieve; `None` uses the service default."""
    min_score: float = Field(default=0.2, ge=-1.0, le=1.0)
    """Passages with a lower cosine similarity are not used."""


INGEST_STEPS: frozenset[str] = frozenset({"ocr", "entities"})
"""Pipeline steps an agent card may name under `pipeline.ingest` (`ocr`: images and scanned PDF pages to text;
`entities`: invoice and contract fields from the text into the document's metadata and a fields chunk)."""

REQUEST_STEPS: frozenset[str] = frozenset({"ocr"})
"""Pipeline steps an agent card may name under `pipeline.request` (`ocr`: a request's image attachments to text)."""


STEP_CANDIDATES: dict[str, tuple[str, ...]] = {
    "ocr": ("smolit-ocr", "smolit-ocr-fast", "smolit-ocr-upscale", "smolit-ocr-faint"),
    "entities": ("smolit-ner-ruler", "smolit-ner", "smolit-ner-rules"),
}
"""Registered models a card may list under `pipeline.candidates.<step>` (the first of each is the step's default)."""

INVOICE_FIELDS = ("invoice_number", "issue_date", "due_date", "seller", "buyer", "total", "currency", "line_amounts")
CONTRACT_FIELDS = ("parties", "effective_date", "term", "governing_law", "amounts")
"""The `entities` step's output fields per document kind (its output contract)."""

ENSEMBLE_MODES: frozenset[str] = frozenset({"vote"})
"""How a card may combine a step's candidates under `pipeline.ensemble.<step>` (`vote`: all run, per-field weighted
majority)."""


def check_model_hints(hints: dict[str, str]) -> dict[str, str]:
    """A request's model hints (step -> model) name a known step and one of its registered models, else ValueError
    naming the known ones."""
    for step, model in hints.items():
        if step not in STEP_CANDIDATES:
            raise ValueError(f"model hint for unknown step {step!r}; steps with models: {sorted(STEP_CANDIDATES)}")
        if model not in STEP_CANDIDATES[step]:
            raise ValueError(f"unknown {step} model {model!r} in the hint; known: {list(STEP_CANDIDATES[step])}")
    return hints


class StepChecks(BaseModel):
    """Post-processing checks a card declares for one step's output, on top of the step's built-in ones (a reading
    that fails them fails like any implausible output: not used, recorded as the model's failed outcome)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_chars: int | None = Field(default=None, ge=1)
    """`ocr`: fewest letters and digits a reading must have (instead of SMOLIT_OCR_MIN_CHARS)."""
    min_confidence: float | None = Field(default=None, ge=0, le=1)
    """`ocr`: lowest character-weighted mean recogniser confidence (instead of SMOLIT_OCR_MIN_CONFIDENCE)."""
    require: tuple[str, ...] = ()
    """`entities`: fields a document of their kind must yield, e.g. `[invoice_number, total]` (an invoice without
    them fails the check; contract fields apply to contracts only)."""

    @field_validator("require")
    @classmethod
    def _known_fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = INVOICE_FIELDS + CONTRACT_FIELDS
        if bad := [f for f in value if f not in known]:
            raise ValueError(f"unknown entity field(s) {bad}; known: {list(known)}")
        return tuple(dict.fromkeys(value))


_CHECKS_OF_STEP = {"ocr": {"min_chars", "min_confidence"}, "entities": {"require"}}


class PipelineConfig(BaseModel):
    """The agent's specialised models, per stage. Each step names a model in the registry (`smolit models list`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ingest: tuple[str, ...] = ()
    """Steps run on documents ingested for this agent, in order (known: `ocr`)."""

    @field_validator("ingest")
    @classmethod
    def _known_steps(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if bad := [step for step in value if step not in INGEST_STEPS]:
            raise ValueError(f"unknown ingest step(s) {bad}; known steps: {sorted(INGEST_STEPS)}")
        return tuple(dict.fromkeys(value))

    request: tuple[str, ...] = ()
    """Steps run on each request's attachments before answering (known: `ocr`); the step's model is the one the
    model manager resolves (`smolit-ocr@champion`), swapped without restart when it is promoted."""

    @field_validator("request")
    @classmethod
    def _known_request_steps(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if bad := [step for step in value if step not in REQUEST_STEPS]:
            raise ValueError(f"unknown request step(s) {bad}; known steps: {sorted(REQUEST_STEPS)}")
        return tuple(dict.fromkeys(value))

    candidates: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Candidate models per step, e.g. `{ocr: [smolit-ocr-fast, smolit-ocr, smolit-ocr-upscale]}`: with more than
    one, a selector picks per input (task properties, description similarity, model memory) at ingest and per
    request attachment; the first is the fallback."""

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for step, models in value.items():
            if step not in STEP_CANDIDATES:
                raise ValueError(
                    f"candidates for unknown step {step!r}; steps with candidates: {sorted(STEP_CANDIDATES)}"
                )
            if not models:
                raise ValueError(f"candidates.{step} is empty; list at least one of {list(STEP_CANDIDATES[step])}")
            if bad := [m for m in models if m not in STEP_CANDIDATES[step]]:
                raise ValueError(f"unknown {step} candidate(s) {bad}; known: {list(STEP_CANDIDATES[step])}")
        return {step: tuple(dict.fromkeys(models)) for step, models in value.items()}

    checks: dict[str, StepChecks] = Field(default_factory=dict)
    """Post-processing checks per step, e.g. `{ocr: {min_chars: 40}, entities: {require: [invoice_number, total]}}`
    (each step accepts only its own: `ocr` min_chars/min_confidence, `entities` require)."""

    ensemble: dict[str, str] = Field(default_factory=dict)
    """Steps whose candidates all run and are combined instead of selected, e.g. `{entities: vote}` (a per-field
    vote weighted by each candidate's model memory); needs at least two candidates for the step."""

    @field_validator("ensemble")
    @classmethod
    def _known_ensembles(cls, value: dict[str, str]) -> dict[str, str]:
        for step, mode in value.items():
            if step not in STEP_CANDIDATES:
                known = sorted(STEP_CANDIDATES)
                raise ValueError(f"ensemble for unknown step {step!r}; steps with candidates: {known}")
            if mode not in ENSEMBLE_MODES:
                raise ValueError(f"unknown ensemble mode {mode!r} for {step}; known: {sorted(ENSEMBLE_MODES)}")
        return value

    @model_validator(mode="after")
    def _candidates_need_step(self) -> PipelineConfig:
        if missing := [step for step in self.candidates if step not in self.ingest and step not in self.request]:
            raise ValueError(
                f"candidates given for step(s) {missing} that are not in `ingest` {list(self.ingest)}"
                f" or `request` {list(self.request)}"
            )
        if few := [step for step in self.ensemble if len(self.candidates.get(step, ())) < 2]:
            raise ValueError(f"ensemble for step(s) {few} needs at least two `candidates` for the step")
        for step, checks in self.checks.items():
            if step not in self.ingest and step not in self.request:
                raise ValueError(f"checks given for step {step!r}, which is not in `ingest` or `request`")
            if wrong := sorted(checks.model_fields_set - _CHECKS_OF_STEP.get(step, set())):
                allowed = sorted(_CHECKS_OF_STEP.get(step, set()))
                raise ValueError(f"check(s) {wrong} do not apply to step {step!r}; its checks: {allowed}")
        return self

    def checks_for(self, step: str) -> StepChecks:
        """The card's declared checks of `step` (none declared: an empty `StepChecks`)."""
        return self.checks.get(step) or StepChecks()

    def candidates_for(self, step: str) -> tuple[str, ...]:
        """The step's candidate models (the step's default model when the card lists none)."""
        return self.candidates.get(step) or STEP_CANDIDATES[step][:1]


class AgentCard(BaseModel):
    """One worker agent. Cards are loaded from YAML and announced with `AgentCreated` events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    """Stable id, also the Kafka key of the agent's tasks (lower case, digits, `-`, `_`)."""
    description: str = Field(min_length=1)
    """One or two sentences on what the agent knows; the router embeds it."""
    examples: tuple[str, ...] = ()
    """Typical requests; the router embeds them too."""
    domain: str | None = None
    """Domain label of the agent's knowledge (defaults to the name)."""
    collection: str | None = None
    """Knowledge collection the agent retrieves from (defaults to the name)."""
    llm: LLMConfig = LLMConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    consults: tuple[str, ...] = ()
    """Agents this one may ask a subquery when part of a request belongs to them."""
    tools: tuple[str, ...] = ()
    """Declared tools this agent may call (allow-list; see agents.tools)."""
    pipeline: PipelineConfig = PipelineConfig()
    """Specialised model steps, e.g. `pipeline: {ingest: [ocr], request: [ocr]}` to read images and scanned PDFs at
    ingestion and image attachments of requests."""
    required_scope: str | None = None
    """API-key scope needed to reach this agent and its knowledge (e.g. `sensitive`); `None`: any chat key."""
    version: int = Field(default=1, ge=1)
    """Card version: a learner challenger (`AgentUpdated`) raises it; each version is an MLflow run."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("agent names are lower case letters, digits, '-' or '_' and start with a letter")
        return value

    @field_validator("consults")
    @classmethod
    def _valid_consults(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if bad := [name for name in value if not _NAME.match(name)]:
            raise ValueError(f"consults names invalid agent names: {bad}")
        return tuple(dict.fromkeys(value))  # keep order, drop repeats

    @field_validator("tools")
    @classmethod
    def _valid_tools(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if bad := [name for name in value if not _NAME.match(name)]:
            raise ValueError(f"tools names invalid tool names: {bad}")
        return tuple(dict.fromkeys(value))

    @property
    def knowledge_collection(self) -> str:
        return self.collection or self.name


#: Card fields an A/B variant file may override (`smolit ab start --agent A --variant FILE`): how the agent answers,
#: never what it is (name, description, collection, tools stay the agent's).
VARIANT_FIELDS: dict[str, frozenset[str]] = {
    "llm": frozenset(LLMConfig.model_fields),
    "retrieval": frozenset(RetrievalConfig.model_fields),
}


def apply_variant(card: AgentCard, overrides: object) -> AgentCard:
    """`card` with a variant's overrides (`{"llm": {...}, "retrieval": {...}}`), validated by the card model.

    Raises ValueError naming the offending key or value: not a mapping, a field outside `VARIANT_FIELDS`, an
    invalid value, or no change at all.
    """
    if not isinstance(overrides, dict) or not overrides:
        raise ValueError("a variant is a mapping with `llm:` and/or `retrieval:` settings")
    update: dict[str, object] = {}
    for section, values in overrides.items():
        if section not in VARIANT_FIELDS:
            allowed = ", ".join(sorted(VARIANT_FIELDS))
            raise ValueError(f"a variant may only override {allowed}; not {section!r}")
        if not isinstance(values, dict):
            raise ValueError(f"`{section}` must be a mapping of settings")
        if unknown := sorted(set(values) - VARIANT_FIELDS[section]):
            raise ValueError(f"unknown {section} settings: {', '.join(map(str, unknown))}")
        current = getattr(card, section).model_dump()
        update[section] = current | values
    data = card.model_dump() | update
    variant = AgentCard.model_validate(data)  # raises pydantic.ValidationError, a ValueError
    if variant == card:
        raise ValueError("the variant changes nothing: its settings equal the agent's card")
    return variant
