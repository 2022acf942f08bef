"""Embedded infrastructure for a single-machine Smolit: a Kafka-protocol broker and PostgreSQL + pgvector."""

from ._proc import Child, EmbeddedStartError, free_port, spawn, terminate
from .broker import EmbeddedBroker
from .postgres import EmbeddedPostgres

__all__ = ["Child", "EmbeddedBroker", "EmbeddedPostgres", "EmbeddedStartError", "free_port", "spawn", "terminate"]
