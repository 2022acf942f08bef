"""Agents: the runtime that answers tasks, retrieval through the knowledge store, and knowledge ingestion."""

from .chunking import chunk_text, split_sentences
from .ingest import Ingestor, RawDocument, content_hash, read_text_files
from .parking import DeadlineSweeper, Draft, ParkingLot
from .runtime import AgentMetrics, AgentRuntime
from .subqueries import SubqueryPolicy, merge_answers, plan_consults

__all__ = [
    "AgentMetrics",
    "AgentRuntime",
    "DeadlineSweeper",
    "Draft",
    "Ingestor",
    "ParkingLot",
    "RawDocument",
    "SubqueryPolicy",
    "chunk_text",
    "content_hash",
    "merge_answers",
    "plan_consults",
    "read_text_files",
    "split_sentences",
]
