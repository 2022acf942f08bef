"""Agents: the runtime that answers tasks, retrieval through the knowledge store, and knowledge ingestion."""

from .chunking import chunk_text, split_sentences
from .ingest import Ingestor, RawDocument, content_hash, read_text_files
from .runtime import AgentMetrics, AgentRuntime

__all__ = [
    "AgentMetrics",
    "AgentRuntime",
    "Ingestor",
    "RawDocument",
    "chunk_text",
    "content_hash",
    "read_text_files",
    "split_sentences",
]
