"""Gateway: the HTTP edge (native request API, feedback, health, metrics) and the answer projection."""

from .app import GatewayDeps, GatewayMetrics, create_app
from .feedback import InferredRating, RatingInference, RatingUnavailable
from .pending import PendingRequests
from .projection import AnswerProjection

__all__ = [
    "AnswerProjection",
    "GatewayDeps",
    "GatewayMetrics",
    "InferredRating",
    "PendingRequests",
    "RatingInference",
    "RatingUnavailable",
    "create_app",
]
