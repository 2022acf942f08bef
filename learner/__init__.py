"""Learner: training examples in, router models out (trained, tracked and promoted through the registry)."""

from .discovery import Discovery, DiscoveryConfig
from .proposals import AgentProposer, ProposerMetrics
from .service import Learner, LearnerConfig, LearnerMetrics

__all__ = [
    "AgentProposer",
    "Discovery",
    "DiscoveryConfig",
    "Learner",
    "LearnerConfig",
    "LearnerMetrics",
    "ProposerMetrics",
]
