"""Stream processors (faust): per-agent metrics windows and training examples from decisions, answers, feedback."""

from .aggregate import UNKNOWN_AGENT, AgentWindows, Pane, WindowSpec, is_negative, window_event_id
from .app import StreamsApp, StreamsConfig
from .join import JoinEntry, training_example_id
from .metrics import StreamMetrics

__all__ = [
    "UNKNOWN_AGENT",
    "AgentWindows",
    "JoinEntry",
    "Pane",
    "StreamMetrics",
    "StreamsApp",
    "StreamsConfig",
    "WindowSpec",
    "is_negative",
    "training_example_id",
    "window_event_id",
]
