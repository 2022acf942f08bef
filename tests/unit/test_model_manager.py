"""The model manager: resolution by alias and by (task type, domain), caching, and the swap on promotion."""

from __future__ import annotations

import base64
import io
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from smolit.agents import AttachmentReader, ModelManager, ModelNotFound, OcrPolicy, PipelineMetrics
from smolit.contracts import (
    TOPIC_EVENTS,
    AgentCard,
    Attachment,
    ModelPromoted,
    RequestReceived,
    RolledBack,
    Topic,
    decode,
    encode,
)
from smolit.infra.ocr import OcrLine


class FakeRegistry:
    """An in-memory model source: aliases and tags set by the test, and a count of reads."""

    def __init__(self) -> None:
        self.tags = {
            "ocr-a": {"task_type": "ocr", "domain": "documents"},
            "ocr-b": {"task_type": "ocr", "domain": "invoices"},
            "emb": {"task_type": "text-embedding", "domain": "general"},
        }
        self.aliases = {("ocr-a", "champion"): "1", ("ocr-b", "champion"): "1"}
        self.reads = 0

    def version_for(self, name: str, alias: str) -> str | None:
        self.reads += 1
        return self.aliases.get((name, alias))

    def model_tags(self) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in self.tags.items()}

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return {"variant": f"{name}-config-{version}"}


class Loads:
    """A loader that records what it built."""

    def __init__(self) -> None:
        self.built: list[tuple[str, str, str]] = []

    def __call__(self, name: str, version: str, tags: Mapping[str, str]) -> Any:
        self.built.append((name, version, tags["variant"]))
        return f"{name}/{version}"


def _manager() -> tuple[ModelManager, FakeRegistry, Loads]:
    registry, loads = FakeRegistry(), Loads()
    return ModelManager(lambda: registry, {"ocr": loads}), registry, loads


def test_get_resolves_the_alias_loads_once_and_caches() -> None:
    """`name@alias` loads the version holding the alias with its version tags, once; later calls hit the cache."""
    manager, registry, loads = _manager()
    first = manager.get("ocr-a@champion")
    assert (first.name, first.version, first.model) == ("ocr-a", "1", "ocr-a/1")
    assert manager.get("ocr-a").model == "ocr-a/1"  # the alias defaults to champion
    assert loads.built == [("ocr-a", "1", "ocr-a-config-1")]
    assert registry.reads == 1
    assert manager.current() == {"ocr-a@champion": "1"}


def test_unknown_alias_or_model_without_loader_is_a_clear_error() -> None:
    """An alias nobody holds and a task type with no loader both raise ModelNotFound naming the problem."""
    manager, _, _ = _manager()
    with pytest.raises(ModelNotFound, match="holds the alias 'challenger'"):
        manager.get("ocr-a@challenger")
    with pytest.raises(ModelNotFound, match="no registered model has task_type 'ner'"):
        manager.resolve("ner")
    manager.source.aliases[("emb", "champion")] = "3"  # type: ignore[attr-defined]
    with pytest.raises(ModelNotFound, match="no loader for 'emb'"):
        manager.get("emb")


def test_resolve_by_task_type_domain_and_preference() -> None:
    """Task type filters; the caller's preference wins, else a model of the domain, else the first by name."""
    manager, _, _ = _manager()
    assert manager.resolve("ocr") == "ocr-a"
    assert manager.resolve("ocr", domain="invoices") == "ocr-b"
    assert manager.resolve("ocr", domain="legal") == "ocr-a"  # no model of that domain: any OCR model
    assert manager.resolve("ocr", prefer=("missing", "ocr-b")) == "ocr-b"
    assert manager.resolve("ocr", domain="invoices", prefer=("ocr-a",)) == "ocr-a"  # a card's own choice wins
    assert manager.for_task("ocr", "invoices").model == "ocr-b/1"


def test_promotion_swaps_while_holders_of_the_old_instance_keep_it() -> None:
    """After a promotion the next get returns the new version; an instance taken before stays the old one."""
    manager, registry, loads = _manager()
    in_flight = manager.get("ocr-a")
    registry.aliases[("ocr-a", "champion")] = "2"
    assert manager.get("ocr-a").version == "1"  # cached until told
    manager.handle([ModelPromoted(correlation_id=uuid.uuid4(), registry_name="ocr-a", version="2")])
    assert in_flight.model == "ocr-a/1"
    assert manager.get("ocr-a").model == "ocr-a/2"
    assert loads.built[-1] == ("ocr-a", "2", "ocr-a-config-2")
    # A rollback moves back; the cached version 1 is reused, not loaded again.
    registry.aliases[("ocr-a", "champion")] = "1"
    manager.handle(
        [RolledBack(correlation_id=uuid.uuid4(), registry_name="ocr-a", version="1", from_version="2", reason="x")]
    )
    assert manager.get("ocr-a").model == "ocr-a/1"
    assert len(loads.built) == 2


def test_promotions_of_models_not_in_use_or_replayed_ones_load_nothing() -> None:
    """A promotion of a model never asked for, or one whose version is already current, is a no-op."""
    manager, registry, loads = _manager()
    assert not manager.promoted("ocr-b", version="5")
    manager.get("ocr-a")
    assert not manager.promoted("ocr-a", version="1")
    registry.aliases[("ocr-a", "champion")] = "1"
    # The registry is the truth: an old event naming version 7 does not override the alias.
    assert not manager.promoted("ocr-a", version="7")
    assert loads.built == [("ocr-a", "1", "ocr-a-config-1")]


def test_concurrent_first_gets_load_once() -> None:
    """Several threads asking for a cold model at once share one load."""
    manager, _, loads = _manager()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(manager.get("ocr-a").model)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ocr-a/1"] * 6
    assert len(loads.built) == 1


class TextEngine:
    """An OCR engine that reads fixed text."""

    name = "fake"

    def __init__(self, text: str, confidence: float = 0.95) -> None:
        self.text, self.confidence = text, confidence

    def read(self, image: Any) -> list[OcrLine]:
        return [OcrLine(self.text, self.confidence, 0, 10, 0)]


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_attachment_reader_uses_the_managers_model_and_records_its_version() -> None:
    """Only cards with `pipeline.request: [ocr]` read attachments; each reading names the model and version, a
    bad image or implausible text is recorded as an error instead of a passage."""
    registry = FakeRegistry()
    engines = {"1": TextEngine("Total due: EUR 1,284.50"), "2": TextEngine("x", 0.2)}
    prometheus = CollectorRegistry()
    metrics = PipelineMetrics.create(prometheus)
    manager = ModelManager(lambda: registry, {"ocr": lambda n, v, t: engines[v]}, metrics.current)
    reader = AttachmentReader(manager, OcrPolicy(timeout_s=5), metrics)
    card = AgentCard(name="inv", description="d", pipeline={"request": ["ocr"], "ingest": ["ocr"]})  # type: ignore[arg-type]
    plain = AgentCard(name="plain", description="d")
    good = Attachment(name="scan.png", media_type="image/png", data=_png())
    bad = Attachment(name="junk.png", media_type="image/png", data=base64.b64encode(b"not an image").decode())

    assert reader.read(plain, [good]) == ([], [], [])
    passages, uses, outcomes = reader.read(card, [good, bad], request_id := uuid.uuid4())
    assert [p.text for p in passages] == ["Total due: EUR 1,284.50"]
    assert passages[0].source == "attachment:scan.png"
    assert [(u.name, u.version, u.input, u.error is None) for u in uses] == [
        ("ocr-a", "1", "scan.png", True),
        ("ocr-a", "1", "junk.png", False),
    ]
    # One outcome for the model memory: the unreadable file was not the model's doing.
    [outcome] = outcomes
    assert (outcome.model, outcome.version, outcome.selected_by, outcome.success) == ("ocr-a", "1", "manager", True)
    assert outcome.correlation_id == request_id and outcome.features["format"] == "png"
    assert reader.read(card, [good], request_id).outcomes[0].event_id == outcome.event_id  # redelivery: same id
    registry.aliases[("ocr-a", "champion")] = "2"
    manager.promoted("ocr-a")
    _, [use], none = reader.read(card, [good])  # without a request id: no outcome events
    assert none == []
    assert use.version == "2" and "too little text" in (use.error or "")
    reads = "smolit_agent_attachment_reads_total"
    assert prometheus.get_sample_value(reads, {"model": "ocr-a", "version": "1", "outcome": "ok"}) == 2
    assert prometheus.get_sample_value(reads, {"model": "ocr-a", "version": "1", "outcome": "failed"}) == 1
    assert prometheus.get_sample_value(reads, {"model": "ocr-a", "version": "2", "outcome": "failed"}) == 1
    assert prometheus.get_sample_value("smolit_agent_model_version", {"model": "ocr-a", "alias": "champion"}) == 2
    reader.close()


def test_promotion_event_and_attachments_round_trip_and_old_payloads_decode() -> None:
    """ModelPromoted travels on the router-models topic; requests without attachments decode as before."""
    assert "ModelPromoted" in TOPIC_EVENTS[Topic.ROUTER_MODELS]
    event = ModelPromoted(correlation_id=uuid.uuid4(), registry_name="smolit-ocr", version="2", previous_version="1")
    assert decode(encode(event)[0]) == event
    old = RequestReceived(correlation_id=uuid.uuid4(), conversation_id="c", text="hi").model_dump(mode="json")
    del old["attachments"]
    assert RequestReceived.model_validate(old).attachments == ()
    with pytest.raises(ValueError, match="unsupported attachment type"):
        Attachment(name="a.pdf", media_type="application/pdf", data="eA==")
    with pytest.raises(ValueError, match="unknown request step"):
        AgentCard(name="x", description="d", pipeline={"request": ["ner"]})  # type: ignore[arg-type]


def test_warm_loads_the_ocr_model_of_cards_that_read_attachments_only() -> None:
    """At start the reader loads the model of cards with `pipeline.request: [ocr]` in a thread; none: no thread."""
    manager, _, loads = _manager()
    reader = AttachmentReader(manager)
    plain = AgentCard(name="plain", description="d")
    assert reader.warm({"plain": plain}) is None
    card = AgentCard(name="inv", description="d", domain="invoices", pipeline={"request": ["ocr"]})  # type: ignore[arg-type]
    thread = reader.warm({"inv": card, "plain": plain})
    assert thread is not None
    thread.join(10)
    assert loads.built == [("ocr-b", "1", "ocr-b-config-1")]
    assert manager.current() == {"ocr-b@champion": "1"}
    reader.close()
