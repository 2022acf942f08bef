"""Smolit: an event-sourced multi-agent LLM service (composition root: CLI and process wiring)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
