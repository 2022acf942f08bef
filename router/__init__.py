"""Router: agent cards, similarity scoring, the decision policy and the routing service."""

from .demotion import AgentStates, demote
from .policy import Decision, NoAgents, decide
from .scoring import SimilarityScorer
from .service import ModelWatcher, Router, RouterMetrics, UnexpectedEvent

__all__ = [
    "AgentStates",
    "Decision",
    "ModelWatcher",
    "NoAgents",
    "Router",
    "RouterMetrics",
    "SimilarityScorer",
    "UnexpectedEvent",
    "decide",
    "demote",
]
