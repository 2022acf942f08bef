"""Agents: the runtime that answers tasks, retrieval through the knowledge store, and knowledge ingestion."""

from .chunking import chunk_text, split_sentences
from .documents import JsonlFields, parse_html, parse_pdf, read_documents
from .ingest import FileError, Ingestor, IngestReport, RawDocument, content_hash, read_text_files
from .runtime import AgentMetrics, AgentRuntime

__all__ = [
    "AgentMetrics",
    "AgentRuntime",
    "FileError",
    "IngestReport",
    "Ingestor",
    "JsonlFields",
    "RawDocument",
    "chunk_text",
    "content_hash",
    "parse_html",
    "parse_pdf",
    "read_documents",
    "read_text_files",
    "split_sentences",
]
