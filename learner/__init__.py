"""Learner: training examples in, router models out (trained, tracked and promoted through the registry)."""

from .service import Learner, LearnerConfig, LearnerMetrics

__all__ = ["Learner", "LearnerConfig", "LearnerMetrics"]
