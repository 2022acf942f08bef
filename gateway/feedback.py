"""Feedback in: validation, once-per-user bookkeeping and the `FeedbackGiven` event.

Feedback with a comment but no rating gets its rating from a sentiment model through the `RatingInference` port
(the composition root backs it with the model manager and `smolit-sentiment@champion`; the gateway never imports
a model or the agents package).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from smolit.contracts import FeedbackGiven, ModelUse

PRODUCER = "gateway"


class FeedbackBody(BaseModel):
    """Feedback on one answered request."""

    model_config = ConfigDict(extra="forbid")

    request_id: uuid.UUID = Field(description="The `request_id` the answer came with.")
    rating: int | None = Field(
        default=None,
        description="-1/+1 (thumbs) or 1–5 (stars); omitted: inferred from `comment` by the sentiment model.",
    )
    scale: Literal["thumbs", "stars"] | None = Field(
        default=None, description="How to read `rating`; default: thumbs for -1/+1, stars for 2–5."
    )
    comment: str | None = Field(default=None, max_length=4000)
    user: str | None = Field(default=None, max_length=200, description="Feedback counts once per user and request.")
    preferred_agent: str | None = Field(
        default=None, max_length=64, description="Corrective feedback: the agent that should have answered."
    )

    @model_validator(mode="after")
    def _valid_rating(self) -> FeedbackBody:
        if self.rating is None:
            if not (self.comment or "").strip():
                raise ValueError("give a rating, or a comment to infer the rating from")
            if self.scale is not None:
                raise ValueError("scale needs a rating (an inferred rating is always thumbs)")
            return self
        if self.scale == "thumbs" and self.rating not in (-1, 1):
            raise ValueError("a thumbs rating is -1 or +1")
        if self.scale == "stars" and not 1 <= self.rating <= 5:
            raise ValueError("a star rating is 1 to 5")
        if self.rating not in (-1, 1, 2, 3, 4, 5):
            raise ValueError("rating is -1/+1 (thumbs) or 1–5 (stars)")
        return self


@dataclass(frozen=True)
class InferredRating:
    """What a sentiment model made of a comment."""

    label: Literal["positive", "negative"]
    confidence: float
    """Probability of `label` (0.5–1)."""
    name: str
    version: str
    alias: str
    seconds: float


class RatingUnavailable(RuntimeError):
    """No sentiment model can infer a rating (none registered, its alias unset, or it failed to load)."""


RatingInference = Callable[[str], InferredRating]
"""Comment -> inferred rating; raises RatingUnavailable. Runs in a worker thread (it may load the model)."""


@dataclass(frozen=True)
class RequestRef:
    """What feedback needs to know about the request it rates."""

    agent: str | None
    answer_event_id: uuid.UUID | None


def load_request_ref(pool: ConnectionPool, request_id: uuid.UUID) -> RequestRef | None:
    with pool.connection() as conn:
        row = conn.execute("SELECT outcome FROM requests WHERE request_id = %s", (request_id,)).fetchone()
    if row is None:
        return None
    outcome: dict[str, Any] = row[0] or {}
    answer = outcome.get("answer") or {}
    decision = outcome.get("decision") or {}
    event_id = answer.get("event_id")
    return RequestRef(
        agent=answer.get("agent") or decision.get("agent"),
        answer_event_id=uuid.UUID(event_id) if event_id else None,
    )


def feedback_event(body: FeedbackBody, ref: RequestRef, inferred: InferredRating | None = None) -> FeedbackGiven:
    """The event for this feedback; `inferred` (a thumbs rating from the comment) when the body has no rating."""
    if body.rating is None and inferred is None:
        raise ValueError("feedback without a rating needs an inferred one")
    rating = body.rating if body.rating is not None else 1 if inferred and inferred.label == "positive" else -1
    return FeedbackGiven(
        correlation_id=body.request_id,
        causation_id=ref.answer_event_id,
        producer=PRODUCER,
        rating=rating,
        scale=body.scale if body.rating is not None else "thumbs",
        inferred_by=None
        if inferred is None or body.rating is not None
        else ModelUse(
            step="sentiment",
            name=inferred.name,
            version=inferred.version,
            alias=inferred.alias,
            input="comment",
            seconds=round(inferred.seconds, 4),
        ),
        inferred_confidence=None if inferred is None or body.rating is not None else round(inferred.confidence, 4),
        comment=body.comment,
        user=body.user,
        preferred_agent=body.preferred_agent,
    )


def claim(pool: ConnectionPool, event: FeedbackGiven) -> uuid.UUID | None:
    """Record this feedback as the one for its (request, user); returns the earlier event's id if there is one."""
    key = (event.correlation_id, event.user or "")
    with pool.connection() as conn:
        for _ in range(3):  # the earlier row can vanish in between if its publication failed (`release`)
            inserted = conn.execute(
                "INSERT INTO feedback (request_id, user_key, event_id, rating) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (request_id, user_key) DO NOTHING RETURNING event_id",
                (*key, event.event_id, event.rating),
            ).fetchone()
            if inserted is not None:
                return None
            row = conn.execute("SELECT event_id FROM feedback WHERE request_id = %s AND user_key = %s", key).fetchone()
            if row is not None:
                return row[0]
    raise RuntimeError(f"feedback row for request {event.correlation_id} keeps changing")


def release(pool: ConnectionPool, event: FeedbackGiven) -> None:
    """Undo `claim` when the event could not be published, so the user can send it again."""
    with pool.connection() as conn:
        conn.execute("DELETE FROM feedback WHERE event_id = %s", (event.event_id,))
