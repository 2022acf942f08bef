"""Learner: router training from events, MLflow registry, agent lifecycle. Filled in by the learning issue."""

__all__: list[str] = []
