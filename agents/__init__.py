"""Agents: the runtime that answers tasks, retrieval through the knowledge store, and knowledge ingestion (with
the `ocr` pipeline step for images and scanned PDFs and the `entities` step for invoice and contract fields)."""

from smolit.infra.model_manager import Loaded, ModelManager, ModelNotFound, ModelSource

from .attachments import AttachmentReader, PipelineMetrics
from .catalog import catalog_listener
from .chunking import chunk_text, split_sentences
from .documents import JsonlFields, parse_html, parse_pdf, read_documents
from .entities import EntitiesFailed, EntityStep, NerLoader, annotate, build_entity_step
from .ingest import FileError, Ingestor, IngestReport, RawDocument, content_hash, read_text_files
from .ocr import IMAGE_SUFFIXES, OcrFailed, OcrLoader, OcrPolicy, OcrStep, OcrText, build_ocr_step, plausibility
from .parking import DeadlineSweeper, Draft, ParkingLot
from .runtime import AgentMetrics, AgentRuntime
from .subqueries import SubqueryPolicy, merge_answers, plan_consults
from .variants import Choice, Trial, Trials, follow_cards

__all__ = [
    "IMAGE_SUFFIXES",
    "AgentMetrics",
    "AgentRuntime",
    "AttachmentReader",
    "Choice",
    "DeadlineSweeper",
    "Draft",
    "EntitiesFailed",
    "EntityStep",
    "FileError",
    "IngestReport",
    "Ingestor",
    "JsonlFields",
    "Loaded",
    "ModelManager",
    "ModelNotFound",
    "ModelSource",
    "NerLoader",
    "OcrFailed",
    "OcrLoader",
    "OcrPolicy",
    "OcrStep",
    "OcrText",
    "ParkingLot",
    "PipelineMetrics",
    "RawDocument",
    "SubqueryPolicy",
    "Trial",
    "Trials",
    "annotate",
    "build_entity_step",
    "build_ocr_step",
    "catalog_listener",
    "chunk_text",
    "content_hash",
    "follow_cards",
    "merge_answers",
    "parse_html",
    "parse_pdf",
    "plan_consults",
    "plausibility",
    "read_documents",
    "read_text_files",
    "split_sentences",
]
