"""Event contracts: envelope, serde, upcasting, topics and vectors."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest
from pydantic import ValidationError

from smolit.contracts import (
    EVENT_TYPES,
    TOPIC_EVENTS,
    AgentCard,
    AnswerProduced,
    DecodeError,
    FeedbackGiven,
    RequestReceived,
    RoutingDecided,
    Source,
    Topic,
    TopicNames,
    decode,
    encode,
    pack_vector,
    serde,
    unpack_vector,
)


def _request(**overrides: object) -> RequestReceived:
    fields = {"correlation_id": uuid4(), "conversation_id": "c1", "text": "How do I deposit a cheque?"}
    return RequestReceived(**(fields | overrides))


def test_events_are_frozen() -> None:
    """Events cannot be changed after creation."""
    event = _request()
    with pytest.raises(ValidationError):
        event.text = "changed"  # type: ignore[misc]


def test_round_trip_keeps_every_field() -> None:
    """Encoding then decoding gives back an equal event of the same class."""
    event = AnswerProduced(
        correlation_id=uuid4(),
        agent="finance",
        answer="Reissue the cheque [1].",
        backend="extractive",
        latency_ms=3.5,
        sources=(Source(chunk_id=1, source="doc", title="t", score=0.8, snippet="s"),),
    )
    value, headers = encode(event)
    decoded = decode(value)
    assert decoded == event
    assert type(decoded) is AnswerProduced
    assert dict(headers)[serde.HEADER_TYPE] == b"AnswerProduced"
    assert dict(headers)[serde.HEADER_EVENT_ID] == str(event.event_id).encode()


def test_caused_links_the_chain() -> None:
    """A caused event keeps the correlation id and points at its cause."""
    request = _request()
    decided = request.caused(
        RoutingDecided,
        producer="router",
        agent="finance",
        scores={"finance": 0.7},
        score=0.7,
        model_version="v",
        latency_ms=1.0,
        embedding=pack_vector([0.0]),
    )
    assert decided.correlation_id == request.correlation_id
    assert decided.causation_id == request.event_id
    assert decided.producer == "router"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "Nope"}', "unknown event type"),
        (
            json.dumps({"type": "RequestReceived", "correlation_id": str(uuid4())}).encode(),
            "invalid RequestReceived",
        ),
        (None, "no value"),
    ],
)
def test_poison_values_raise_decode_error(value: bytes | None, reason: str) -> None:
    """Undecodable or schema-invalid values raise DecodeError with a reason."""
    with pytest.raises(DecodeError, match=reason):
        decode(value)


def test_newer_schema_version_is_rejected() -> None:
    """An event from a newer producer build is poison for an older consumer, not silently misread."""
    payload = json.loads(encode(_request())[0]) | {"schema_version": 99}
    with pytest.raises(DecodeError, match="newer than this build"):
        decode(json.dumps(payload).encode())


def test_upcaster_turns_old_payload_into_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered upcasters run in order until the payload reaches the current version."""
    monkeypatch.setattr(RequestReceived, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(serde, "_UPCASTERS", {})

    @serde.register_upcaster("RequestReceived", 1)
    def v1_to_v2(payload: dict) -> dict:
        return {**payload, "text": payload.pop("question")}

    old = {
        "type": "RequestReceived",
        "schema_version": 1,
        "correlation_id": str(uuid4()),
        "conversation_id": "c",
        "question": "old field name",
    }
    upcast = serde.upcast(old)
    assert upcast["text"] == "old field name"
    assert upcast["schema_version"] == 2


def test_missing_upcaster_is_a_decode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an upcaster an old payload cannot be read and says so."""
    monkeypatch.setattr(RequestReceived, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(serde, "_UPCASTERS", {})
    with pytest.raises(DecodeError, match="no upcaster"):
        decode(encode(_request())[0])


def test_every_event_type_has_a_topic() -> None:
    """Each event type is carried by exactly one topic."""
    carried = [t for events in TOPIC_EVENTS.values() for t in events]
    assert sorted(carried) == sorted(EVENT_TYPES)


def test_topic_names_use_the_prefix() -> None:
    """Physical topic names follow `<prefix>.<name>.v1`."""
    names = TopicNames("acme")
    assert names(Topic.DLQ) == "acme.dlq.v1"
    assert len(set(names.all())) == len(Topic)


def test_vectors_round_trip_as_float32() -> None:
    """Packed vectors decode to the same float32 values."""
    values = [0.1, -0.5, 1e-8, 3.0]
    assert unpack_vector(pack_vector(values)) == pytest.approx(values, rel=1e-6)


def test_agent_card_names_are_validated() -> None:
    """Agent names must be safe identifiers."""
    with pytest.raises(ValidationError):
        AgentCard(name="Bad Name", description="x")
    assert AgentCard(name="finance", description="money").knowledge_collection == "finance"


@pytest.mark.parametrize(
    ("rating", "scale", "sentiment"),
    [
        (1, None, "positive"),
        (-1, None, "negative"),
        (1, "stars", "negative"),
        (3, None, "neutral"),
        (4, None, "positive"),
        (2, "stars", "negative"),
        (1, "thumbs", "positive"),
    ],
)
def test_feedback_sentiment_reads_the_scale(rating: int, scale: str | None, sentiment: str) -> None:
    """A rating of 1 is a thumbs-up on the thumbs scale and a one-star review on the stars scale."""
    assert FeedbackGiven(correlation_id=uuid4(), rating=rating, scale=scale).sentiment == sentiment


@pytest.mark.parametrize(("rating", "scale"), [(3, "thumbs"), (-1, "stars"), (0, "stars")])
def test_feedback_rating_must_fit_its_scale(rating: int, scale: str) -> None:
    """A rating outside its declared scale is rejected."""
    with pytest.raises(ValidationError):
        FeedbackGiven(correlation_id=uuid4(), rating=rating, scale=scale)
