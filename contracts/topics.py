"""Topic registry: the logical topics of ARCHITECTURE.md §2, their default names and which events they carry."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    """Logical topic; the physical name is `<prefix>.<value>.v1`."""

    REQUESTS = "requests"
    DECISIONS = "decisions"
    TASKS = "tasks"
    SUBQUERIES = "subqueries"
    ANSWERS = "answers"
    FEEDBACK = "feedback"
    AGENT_METRICS = "agent-metrics"
    TRAINING_EXAMPLES = "training-examples"
    ROUTER_MODELS = "router-models"
    AGENT_LIFECYCLE = "agent-lifecycle"
    AUDIT = "audit"
    MODEL_OUTCOMES = "model-outcomes"
    DLQ = "dlq"


#: Event types each topic carries (the producer side checks this).
TOPIC_EVENTS: dict[Topic, frozenset[str]] = {
    Topic.REQUESTS: frozenset({"RequestReceived"}),
    Topic.DECISIONS: frozenset({"RoutingDecided"}),
    Topic.TASKS: frozenset({"TaskAssigned"}),
    Topic.SUBQUERIES: frozenset({"SubqueryRequested"}),
    Topic.ANSWERS: frozenset({"AnswerProduced", "SubqueryAnswered", "TaskFailed"}),
    Topic.FEEDBACK: frozenset({"FeedbackGiven"}),
    Topic.AGENT_METRICS: frozenset({"AgentMetricsWindow"}),
    Topic.TRAINING_EXAMPLES: frozenset({"TrainingExample"}),
    # Also every other registered model's promotions: the agents service already replays and follows this topic.
    Topic.ROUTER_MODELS: frozenset(
        {"RouterModelPromoted", "ModelPromoted", "RolledBack", "ExperimentStarted", "ExperimentStopped"}
    ),
    Topic.AGENT_LIFECYCLE: frozenset(
        {"AgentCreated", "AgentProposed", "AgentUpdated", "AgentFlagged", "AgentUnflagged", "AgentRetired"}
    ),
    Topic.AUDIT: frozenset({"RequestBlocked", "ToolCalled"}),
    Topic.MODEL_OUTCOMES: frozenset({"ModelOutcomeRecorded"}),
    Topic.DLQ: frozenset({"DeadLetter"}),
}


@dataclass(frozen=True)
class TopicNames:
    """Maps logical topics to physical names under one prefix."""

    prefix: str = "smolit"

    def __call__(self, topic: Topic) -> str:
        return f"{self.prefix}.{topic.value}.v1"

    def all(self) -> list[str]:
        return [self(t) for t in Topic]

    def group(self, name: str) -> str:
        """Consumer group `<prefix>-<name>`: deployments with their own prefix on one cluster never share a group."""
        return f"{self.prefix}-{name}"
