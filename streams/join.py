"""RoutingDecided ⋈ AnswerProduced/TaskFailed ⋈ FeedbackGiven by request id, pure: one `JoinEntry` per request.

The entry is created by whichever event of a request comes first (events may arrive in any order) and produces:
- a `TrainingExample` as soon as the decision, the outcome and the first feedback are known — or at once for a
  failure (an implicit negative) — or, when the feedback time-to-live passes, with no rating (answered) or as a
  failure (no answer ever came: a timeout, also an implicit negative);
- metric facts for feedback, attributed to the decided agent, one per (request, user): a user who rates twice counts
  once, with the first rating.

The example's event id depends only on the request id, so re-emitting it after a crash is harmless downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from smolit.contracts import AnswerProduced, Event, FeedbackGiven, RoutingDecided, TaskFailed, TrainingExample

from .aggregate import Fact

_NAMESPACE = uuid5(NAMESPACE_URL, "https://smolit.dev/streams/training")
JoinedEvent = RoutingDecided | AnswerProduced | TaskFailed | FeedbackGiven


def training_example_id(request_id: UUID | str) -> UUID:
    return uuid5(_NAMESPACE, str(request_id))


@dataclass
class JoinEntry:
    """What is known about one request. JSON-serialisable through `to_dict`/`from_dict`."""

    request_id: str
    partition: int
    first_seen: float
    """Event time of the first event (epoch s); the TTL counts from the decision when there is one."""
    decision: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    """`{"answered": latency_ms}` or `{"failed": reason}`, with the answering `card_version`."""
    ratings: dict[str, list[Any]] = field(default_factory=dict)
    """User key → [rating, event time, positive (True/False/None), preferred agent], in arrival order; the first
    rating of each user wins. (Entries stored before the last two fields existed hold two items.)"""
    seen: dict[str, str] = field(default_factory=dict)
    """Event id → `topic:partition:offset` where it was first read: a replay re-emits, a duplicate is ignored."""
    emitted: bool = False

    # ---- applying events ----------------------------------------------------------------------------------

    def is_duplicate(self, event: Event, position: str) -> bool:
        """An event id seen before at another offset is an upstream duplicate; at the same offset, a replay."""
        first = self.seen.setdefault(str(event.event_id), position)
        return first != position

    def apply(self, event: JoinedEvent) -> None:
        if isinstance(event, RoutingDecided):
            if self.decision is None:
                self.decision = {
                    "event_id": str(event.event_id),
                    "agent": event.agent,
                    "scores": event.scores,
                    "text": event.text,
                    "embedding": event.embedding,
                    "propensity": event.propensity,
                    "model_version": event.model_version,
                    "t": event.occurred_at.timestamp(),
                }
        elif isinstance(event, AnswerProduced):
            if self.outcome is None:
                self.outcome = {"answered": event.latency_ms, "card_version": event.card_version}
        elif isinstance(event, TaskFailed):
            if self.outcome is None:
                self.outcome = {"failed": event.reason, "card_version": event.card_version}
        elif isinstance(event, FeedbackGiven):
            user = f"user:{event.user}" if event.user else f"event:{event.event_id}"
            positive = {"positive": True, "negative": False}.get(event.sentiment)
            self.ratings.setdefault(
                user, [event.rating, event.occurred_at.timestamp(), positive, event.preferred_agent]
            )

    # ---- outputs ------------------------------------------------------------------------------------------

    def feedback_facts(self) -> list[Fact]:
        """One fact per (request, user) once the agent is known; ids make re-emission idempotent."""
        if self.decision is None:
            return []
        return [
            {"a": self.decision["agent"], "t": entry[1], "id": f"fb:{self.request_id}:{user}", "fb": entry[0]}
            for user, entry in self.ratings.items()
        ]

    def ready(self) -> bool:
        """Decision and outcome known, and either a rating or a failure (which needs none)."""
        if self.emitted or self.decision is None or self.outcome is None:
            return False
        return bool(self.ratings) or "failed" in self.outcome

    def deadline(self, ttl_s: float) -> float:
        return (self.decision["t"] if self.decision else self.first_seen) + ttl_s

    def expire(self, ttl_s: float) -> tuple[TrainingExample | None, Fact | None]:
        """At the TTL: the example not yet emitted (if a decision exists) and a timeout fact when no outcome came."""
        if self.decision is None or self.emitted:
            return None, None
        timeout: Fact | None = None
        if self.outcome is None:
            self.outcome = {"failed": "timeout: no answer within the feedback TTL"}
            # Counted when it became known (the deadline): an earlier time would fall in a window already closed.
            deadline = self.decision["t"] + ttl_s
            timeout = {"a": self.decision["agent"], "t": deadline, "id": f"to:{self.request_id}", "fail": 1}
        return self.example(), timeout

    def example(self) -> TrainingExample:
        """The training example (marks the entry emitted)."""
        assert self.decision is not None and self.outcome is not None
        self.emitted = True
        first = next(iter(self.ratings.values()), [None, None])  # first to arrive: stable on re-emission
        rating = first[0]
        positive = first[2] if len(first) > 2 else (rating > 0 if rating in (-1, 1) else None)
        if "failed" in self.outcome:
            positive = False
        return TrainingExample(
            event_id=training_example_id(self.request_id),
            occurred_at=datetime.fromtimestamp(self.decision["t"], UTC),  # deterministic: a re-emission is identical
            correlation_id=UUID(self.request_id),
            causation_id=UUID(self.decision["event_id"]),
            producer="streams",
            text=self.decision["text"],
            embedding=self.decision["embedding"],
            agent=self.decision["agent"],
            scores=self.decision["scores"],
            rating=rating,
            failed="failed" in self.outcome,
            latency_ms=self.outcome.get("answered"),
            propensity=self.decision["propensity"],
            positive=positive,
            preferred_agent=first[3] if len(first) > 3 else None,
            model_version=self.decision.get("model_version"),
            card_version=self.outcome.get("card_version"),  # entries stored before versions: None
        )

    # ---- serialisation -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JoinEntry:
        return cls(**d)
