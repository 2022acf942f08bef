"""Value objects that events carry inside their payloads (attachments, clauses, sources, pipeline model uses):
frozen pydantic models with no envelope of their own."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

IMAGE_MEDIA_TYPES: frozenset[str] = frozenset({"image/png", "image/jpeg", "image/tiff", "image/bmp"})
"""Attachment types agents can read (an agent card's `pipeline.request: [ocr]` reads them)."""


class Attachment(BaseModel):
    """A file sent with a request (an invoice scan, a photographed page), carried inline with its events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    """File name, for sources and logs."""
    media_type: str
    """MIME type; one of `IMAGE_MEDIA_TYPES`."""
    data: str = Field(min_length=1)
    """The file's bytes, base64 (the gateway checks the count and decoded size limits)."""

    @field_validator("media_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in IMAGE_MEDIA_TYPES:
            raise ValueError(f"unsupported attachment type {value!r}; supported: {sorted(IMAGE_MEDIA_TYPES)}")
        return value


class ModelUse(BaseModel):
    """One pipeline model that ran for an answer: which registered model and version, and how it went."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: str
    """Pipeline step (e.g. `ocr`)."""
    name: str
    """Registered model name (`smolit models list`)."""
    version: str
    """Registry version that ran (the one holding the alias when the work started)."""
    alias: str | None = None
    """Alias it was resolved by (e.g. `champion`)."""
    input: str | None = None
    """What it ran on (an attachment's file name)."""
    seconds: float = 0.0
    error: str | None = None
    """Why its output was not used (timeout, implausible output); `None`: used."""
    scores: dict[str, float] = Field(default_factory=dict)
    """The selector's score of every candidate when it chose this model among several; empty otherwise."""
    selected_by: str | None = None
    """Why this model ran: `manager` (the card's one model), `selector` (among several candidates) or `hint` (the
    request asked for it); `None` in events from before it was recorded."""
    hint_ignored: str | None = None
    """Why the request's model hint was not followed (not a candidate of the agent); `None`: no hint, or followed."""


class Clause(BaseModel):
    """One part of a compound request ("..., and is ... enforceable?"), embedded and scored by the router."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    embedding: str
    """Clause embedding (contracts.vectors wire form)."""
    scores: dict[str, float]
    """Score of every agent for this clause alone."""


class Source(BaseModel):
    """A knowledge passage an answer used."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_id: int
    source: str
    """Where the document came from (path, URL or dataset row)."""
    title: str | None = None
    score: float
    """Cosine similarity of the passage to the request."""
    snippet: str
    """Start of the passage, for display."""
