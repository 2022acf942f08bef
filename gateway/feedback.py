"""Feedback in: validation, once-per-user bookkeeping and the `FeedbackGiven` event."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from smolit.contracts import FeedbackGiven

PRODUCER = "gateway"


class FeedbackBody(BaseModel):
    """Feedback on one answered request."""

    model_config = ConfigDict(extra="forbid")

    request_id: uuid.UUID = Field(description="The `request_id` the answer came with.")
    rating: int = Field(description="-1/+1 (thumbs) or 1–5 (stars).")
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
        if self.scale == "thumbs" and self.rating not in (-1, 1):
            raise ValueError("a thumbs rating is -1 or +1")
        if self.scale == "stars" and not 1 <= self.rating <= 5:
            raise ValueError("a star rating is 1 to 5")
        if self.rating not in (-1, 1, 2, 3, 4, 5):
            raise ValueError("rating is -1/+1 (thumbs) or 1–5 (stars)")
        return self


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


def feedback_event(body: FeedbackBody, ref: RequestRef) -> FeedbackGiven:
    return FeedbackGiven(
        correlation_id=body.request_id,
        causation_id=ref.answer_event_id,
        producer=PRODUCER,
        rating=body.rating,
        scale=body.scale,
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
