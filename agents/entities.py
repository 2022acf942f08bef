"""The `entities` pipeline step: typed invoice and contract fields from a document's text, with a timeout per
candidate, a plausibility check, model selection among the card's candidates and an optional per-field vote.

A card opts in with `pipeline: {ingest: [entities]}` (after `ocr`, so scanned invoices are read first) and may list
`candidates: {entities: [smolit-ner-rules, smolit-ner-ruler, smolit-ner]}` and `ensemble: {entities: vote}`.
- One candidate: it runs.
- Several: `selection.select` picks one per document from the text's features (kind, layout, currency and date
  style), the description similarity and the model memory (`ModelOutcomeRecorded` with step `entities`).
- `vote`: every candidate runs and each field takes the value with the most weight (weights from the model memory).
Each candidate that ran records its outcome (its output passed `entity_fields.check`; confidence = share of the
kind's fields found), so the memory learns which candidate fits which texts. Documents that are neither invoices
nor contracts are left alone.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from smolit.contracts import ModelOutcomeRecorded
from smolit.infra.ner_models import NER_VARIANTS, NerVariant
from smolit.infra.settings import Settings

from .entity_fields import FIELDS, Extraction, FieldValue, TextFeatures, check, coverage, text_features, vote
from .entity_rules import RULES_MODEL, RulesExtractor
from .ingest import FileError, RawDocument
from .selection import ModelMemory, SelectionWeights, select

STEP = "entities"
MIN_CHUNK_FIELDS = 2
"""Fewest fields an extraction needs before they are stored as a chunk of their own (metadata has them anyway)."""
Embed = Callable[[list[str]], np.ndarray]


class Extractor(Protocol):
    @property
    def name(self) -> str: ...

    def extract(self, text: str, kind: str | None = None) -> Extraction: ...


class EntitiesFailed(ValueError):
    """No candidate gave fields for a document (timeouts or errors)."""


@dataclass(frozen=True)
class TextCandidate:
    """An entity-extraction candidate as the selector sees it (`infra.ner_models.NER_VARIANTS`)."""

    name: str
    description: str
    layouts: frozenset[str]
    currency: frozenset[str]
    dates: frozenset[str]

    @classmethod
    def of(cls, variant: NerVariant) -> TextCandidate:
        return cls(variant.name, variant.description, variant.layouts, variant.currency, variant.dates)

    def fit(self, f: TextFeatures) -> float:
        checks = (f.layout in self.layouts, f.currency in self.currency, f.dates in self.dates)
        return sum(checks) / len(checks)


def build_extractor(name: str) -> Extractor:
    """The candidate `name` (spaCy pipelines load on first use)."""
    from .ner import SpacyExtractor

    variant = NER_VARIANTS.get(name)
    if variant is None:
        raise EntitiesFailed(f"unknown entity model {name!r}; known: {list(NER_VARIANTS)}")
    return SpacyExtractor(name) if variant.spacy else RulesExtractor()


@dataclass(frozen=True)
class EntityResult:
    """The step's output for one document."""

    extraction: Extraction
    checks: dict[str, bool]
    models: tuple[str, ...]
    """Candidates that ran (one, or all of them for a vote)."""
    seconds: float
    selection: dict[str, Any] | None = None
    errors: dict[str, str] | None = None

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def metadata(self) -> dict[str, Any]:
        """What goes into the document's metadata under `entities`."""
        meta: dict[str, Any] = {
            "kind": self.extraction.kind,
            "model": self.extraction.model,
            "models": list(self.models),
            "fields": self.extraction.metadata(),
            "check": {"passed": self.passed, **self.checks},
            "seconds": round(self.seconds, 3),
        }
        if self.selection:
            meta["selection"] = self.selection
        if self.errors:
            meta["errors"] = self.errors
        return meta


_LABELS = {
    "invoice_number": "invoice number",
    "issue_date": "issue date",
    "due_date": "due date",
    "seller": "seller (vendor)",
    "buyer": "buyer (customer)",
    "line_amounts": "line amounts",
    "parties": "parties",
    "effective_date": "effective date",
    "term": "term",
    "governing_law": "governing law and jurisdiction",
    "amounts": "amounts",
}


def _money(amount: str) -> str:
    whole, _, cents = amount.partition(".")
    return f"{int(whole):,}.{cents or '00'}"


def summary(extraction: Extraction, source_title: str | None = None) -> str:
    """The fields as one sentence-per-field passage, stored as an extra chunk of the document so that retrieval and
    the answer can use them (`Total amount: EUR 1,284.50.`)."""
    f = extraction.fields
    kind = extraction.kind.capitalize()
    lines = [f"{kind} fields extracted by {extraction.model}" + (f" from {source_title}" if source_title else "") + "."]
    currency = f"{f['currency']} " if isinstance(f.get("currency"), str) else ""
    for name, value in f.items():
        if name == "currency":
            continue
        if name == "total":
            lines.append(f"Total amount: {currency}{_money(str(value))}.")
            continue
        values = value if isinstance(value, tuple) else (value,)
        if name in ("line_amounts", "amounts"):
            values = tuple(currency + _money(v) for v in values)
        joined = " and ".join(values) if name == "parties" else ", ".join(values)
        lines.append(f"{_LABELS.get(name, name).capitalize()}: {joined}.")
    return "\n".join(lines)


@dataclass(frozen=True)
class EntityPolicy:
    timeout_s: float = 10.0
    """Longest run of one candidate on one document."""
    ensemble: bool = False
    """Every candidate runs and the fields are voted on (else one candidate is selected per document)."""
    require: tuple[str, ...] = ()
    """Fields a document of their kind must yield (the card's `pipeline.checks.entities.require`): check `required`."""

    def checks(self, extraction: Extraction) -> dict[str, bool]:
        """The built-in checks of an extraction plus the card's `required` fields of its kind, when any apply."""
        result = check(extraction)
        if wanted := [f for f in self.require if f in FIELDS.get(extraction.kind, ())]:
            result["required"] = all(f in extraction.fields for f in wanted)
        return result


class EntityStep:
    """Runs the card's entity candidates on document texts (thread-safe for one caller at a time per document)."""

    def __init__(
        self,
        names: Sequence[str],
        policy: EntityPolicy = EntityPolicy(),
        *,
        extractors: Mapping[str, Extractor] | None = None,
        memory: ModelMemory | None = None,
        embed: Embed | None = None,
        agent: str | None = None,
        domain: str | None = None,
        on_outcome: Callable[[ModelOutcomeRecorded], None] | None = None,
    ) -> None:
        if not names:
            raise ValueError("the entities step needs at least one candidate")
        self.names = tuple(names)
        self.policy = policy
        self.candidates = [TextCandidate.of(NER_VARIANTS[n]) for n in self.names]
        self._extractors = dict(extractors or {})
        self.memory = memory if memory is not None else ModelMemory()
        self._embed = embed
        self._vectors: dict[str, np.ndarray] | None = None
        self.agent, self.domain = agent, domain
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="entities")

    def extractor(self, name: str) -> Extractor:
        with self._lock:
            if name not in self._extractors:
                self._extractors[name] = build_extractor(name)
            return self._extractors[name]

    @property
    def _context(self) -> dict[str, str]:
        return {"domain": self.domain} if self.domain else {}

    def choose(self, features: TextFeatures) -> tuple[str, dict[str, float]]:
        if len(self.candidates) == 1:
            return self.names[0], {self.names[0]: 0.0}
        task_vector = None
        if self._embed is not None:
            if self._vectors is None:
                vectors = self._embed([c.description for c in self.candidates])
                self._vectors = {c.name: vectors[i] for i, c in enumerate(self.candidates)}
            task_vector = self._embed([features.describe(self.domain)])[0]
        choice = select(
            self.candidates,
            features,
            step=STEP,
            task_vector=task_vector,
            candidate_vectors=self._vectors,
            memory=self.memory,
            context=self._context,
        )
        return choice.model, choice.scores

    def weights(self, features: TextFeatures) -> dict[str, float]:
        """Vote weight per candidate: its model-memory value on texts like this one (0.5 while unknown)."""
        buckets = features.buckets() | self._context
        evidence_half = SelectionWeights().evidence
        out = {}
        for name in self.names:
            value, evidence = self.memory.estimate(name, STEP, buckets)
            out[name] = round(0.5 + evidence / (evidence + evidence_half) * (value - 0.5), 4)
        return out

    def run(self, name: str, text: str, kind: str) -> Extraction:
        """One candidate on one text within the timeout. Raises EntitiesFailed."""
        extractor = self.extractor(name)
        future = self._pool.submit(extractor.extract, text, kind)
        try:
            return future.result(timeout=self.policy.timeout_s)
        except FutureTimeout:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="entities")
            raise EntitiesFailed(f"{name} timed out after {self.policy.timeout_s:g} s") from None
        except Exception as exc:  # a model that cannot load or crashes on this text fails this document only
            raise EntitiesFailed(f"{name} failed: {type(exc).__name__}: {exc}") from exc

    def extract(self, text: str, source: str | None = None) -> EntityResult | None:
        """Fields of one document, or None when it is neither an invoice nor a contract. Raises EntitiesFailed when
        no candidate gave an answer."""
        features = text_features(text)
        if features.kind not in ("invoice", "contract"):
            return None
        started = time.perf_counter()
        selection: dict[str, Any] = {"features": features.buckets()}
        if self.policy.ensemble and len(self.names) > 1:
            names, selected_by = list(self.names), "ensemble"
            selection["weights"] = weights = self.weights(features)
        else:
            chosen, scores = self.choose(features)
            names, selected_by, weights = [chosen], ("selector" if len(self.names) > 1 else "only-candidate"), {}
            selection["scores"] = scores
        results, errors = [], {}
        for name in names:
            try:
                result = self.run(name, text, features.kind)
            except EntitiesFailed as exc:
                errors[name] = str(exc)
                self._record(name, features, False, 0.0, None, source, selected_by, {})
                continue
            checks = self.policy.checks(result)
            self._record(name, features, all(checks.values()), coverage(result), result, source, selected_by, checks)
            results.append(result)
        if not results:
            raise EntitiesFailed("; ".join(errors.values()))
        final = vote(results, weights) if len(names) > 1 else results[0]
        return EntityResult(
            final,
            self.policy.checks(final),
            tuple(names),
            time.perf_counter() - started,
            selection if len(self.names) > 1 else None,
            errors or None,
        )

    def _record(
        self,
        model: str,
        features: TextFeatures,
        success: bool,
        confidence: float,
        result: Extraction | None,
        source: str | None,
        selected_by: str,
        checks: dict[str, bool],
    ) -> None:
        event = ModelOutcomeRecorded(
            correlation_id=uuid.uuid4(),
            producer="ingest",
            model=model,
            step=STEP,
            agent=self.agent,
            features=features.buckets() | self._context,
            success=success,
            checks=checks,
            confidence=round(confidence, 4),
            seconds=None if result is None else round(result.seconds, 4),
            source=source,
            selected_by=selected_by,
        )
        self.memory.apply([event])
        if self._on_outcome is not None:
            self._on_outcome(event)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def build_entity_step(
    settings: Settings,
    names: Sequence[str],
    ensemble: bool = False,
    require: Sequence[str] = (),
    **kwargs: Any,
) -> EntityStep:
    return EntityStep(names, EntityPolicy(settings.entities_timeout_s, ensemble, tuple(require)), **kwargs)


class NerLoader:
    """Model-manager loader for `task_type: ner` versions: the version's `variant` tag (else its registered name)
    picks the candidate; one loaded extractor per candidate."""

    def __init__(self) -> None:
        self._loaded: dict[str, Extractor] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, version: str, tags: Mapping[str, str]) -> Extractor:
        key = tags.get("variant") or name
        if key not in NER_VARIANTS:
            raise EntitiesFailed(f"{name} version {version} names entity model {key!r}; known: {list(NER_VARIANTS)}")
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = build_extractor(key)
            return self._loaded[key]


def annotate(
    docs: Iterable[RawDocument | FileError], step: EntityStep, *, on_error: Callable[[str, str], None] | None = None
) -> Iterator[RawDocument | FileError]:
    """Documents with `entities` metadata and, when the fields pass their check and are at least
    `MIN_CHUNK_FIELDS`, a fields chunk; other documents as they are."""
    for doc in docs:
        if not isinstance(doc, RawDocument):
            yield doc
            continue
        try:
            result = step.extract(doc.text, doc.source)
        except EntitiesFailed as exc:  # the text is still worth ingesting; the reason goes into its metadata
            if on_error:
                on_error(doc.source, str(exc))
            yield replace(doc, metadata=(doc.metadata or {}) | {"entities": {"error": str(exc)}})
            continue
        if result is None:
            yield doc
            continue
        # One lone field (a finance article that mentions an invoice and a price) is not worth a chunk of its own.
        worth = result.passed and len(result.extraction.fields) >= MIN_CHUNK_FIELDS
        extra = (summary(result.extraction, doc.title),) if worth else ()
        yield replace(doc, metadata=(doc.metadata or {}) | {"entities": result.metadata()}, extra_chunks=extra)


__all__ = [
    "RULES_MODEL",
    "EntitiesFailed",
    "EntityPolicy",
    "EntityResult",
    "EntityStep",
    "Extractor",
    "FieldValue",
    "NerLoader",
    "TextCandidate",
    "annotate",
    "build_entity_step",
    "build_extractor",
    "summary",
]
