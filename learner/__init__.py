"""Learner: training examples in, router models out (trained, tracked and promoted through the registry); agent
flags from a confidence bound on each agent's negative outcomes, with a challenger card as the improvement step;
pipeline models rolled back when their live outcomes drop."""

from .discovery import Discovery, DiscoveryConfig
from .flags import FlagRule
from .improvement import MlflowAgentVersions
from .model_monitor import ModelMonitor, ModelMonitorConfig, ModelMonitorMetrics
from .monitor import FlagMetrics, FlagMonitor, MonitorConfig
from .naming import LLMNamer
from .proposals import AgentProposer, ProposerMetrics
from .service import Learner, LearnerConfig, LearnerMetrics

__all__ = [
    "AgentProposer",
    "Discovery",
    "DiscoveryConfig",
    "FlagMetrics",
    "FlagMonitor",
    "FlagRule",
    "LLMNamer",
    "Learner",
    "LearnerConfig",
    "LearnerMetrics",
    "MlflowAgentVersions",
    "ModelMonitor",
    "ModelMonitorConfig",
    "ModelMonitorMetrics",
    "MonitorConfig",
    "ProposerMetrics",
]
