"""structlog set-up: JSON lines when stderr is not a terminal, a readable console renderer when it is."""

from __future__ import annotations

import logging
import sys

import structlog

from smolit.contracts import Event


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # Third-party chatter is not our canonical log line.
    for noisy in ("httpx", "uvicorn.access", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


def event_fields(event: Event) -> dict[str, str]:
    """The fields every log line about an event carries: request id (correlation), event id and type, agent."""
    fields = {
        "request_id": str(event.correlation_id),
        "event_id": str(event.event_id),
        "event_type": str(getattr(event, "type", type(event).__name__)),  # `type` lives on each subclass
    }
    agent = getattr(event, "agent", None)
    if agent is not None:
        fields["agent"] = str(agent)
    return fields
