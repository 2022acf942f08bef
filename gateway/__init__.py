"""Gateway: the HTTP edge (native request API, health, metrics) and the answer projection."""

from .app import GatewayDeps, create_app
from .pending import PendingRequests
from .projection import AnswerProjection

__all__ = ["AnswerProjection", "GatewayDeps", "PendingRequests", "create_app"]
