"""Split documents into retrieval chunks: paragraphs packed up to a size, long paragraphs split at sentences."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_BLANK_LINES = re.compile(r"\n\s*\n")
_SPACES = re.compile(r"[ \t\r\f\v]+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def chunk_text(text: str, max_chars: int = 900, overlap_sentences: int = 1) -> list[str]:
    """Chunks of at most ~max_chars, cut at paragraph or sentence boundaries.

    Consecutive chunks share `overlap_sentences` sentences so a fact split across a boundary stays findable.
    A single sentence longer than `max_chars` is cut at word boundaries.
    """
    if max_chars < 50:
        raise ValueError("max_chars must be at least 50")
    sentences: list[str] = []
    for para in _BLANK_LINES.split(text):
        para = _SPACES.sub(" ", para).strip()
        if para:
            sentences.extend(piece for s in split_sentences(para) for piece in _fit(s, max_chars))
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in sentences:
        if current and size + 1 + len(sentence) > max_chars:
            chunks.append(" ".join(current))
            current = current[-overlap_sentences:] if overlap_sentences else []
            size = sum(len(s) + 1 for s in current)
            if size + len(sentence) > max_chars:  # overlap would overflow: start clean
                current, size = [], 0
        current.append(sentence)
        size += len(sentence) + 1
    if current:
        chunks.append(" ".join(current))
    return chunks


def _fit(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces, line = [], ""
    for word in sentence.split(" "):
        while len(word) > max_chars:  # a single unbroken token longer than a chunk
            if line:
                pieces.append(line)
                line = ""
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if line and len(line) + 1 + len(word) > max_chars:
            pieces.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        pieces.append(line)
    return pieces
