"""Split a compound request into clauses, so each part can be scored (and later answered) on its own."""

from __future__ import annotations

import re

# Clause boundaries: a question mark or semicolon followed by more text, or ", and"/" and" before a new question
# ("..., and is the clause enforceable?"). Plain "and" inside a noun phrase ("taxes and fees") does not split.
_QUESTION_WORDS = (
    "is|are|was|were|does|do|did|can|could|should|would|will|what|how|who|when|where|why|which|may|must|has|have"
)
_BOUNDARY = re.compile(rf"(?<=[?;])\s+|,?\s+(?:and|but|also|plus)\s+(?=(?:{_QUESTION_WORDS})\b)", re.IGNORECASE)
_MIN_WORDS = 3  # shorter fragments ("and why?") carry too little to score


def split_clauses(text: str, max_clauses: int = 4) -> list[str]:
    """The request's clauses when it asks two or more things; an empty list for a single question."""
    parts = [" ".join(p.split()).strip(" ,") for p in _BOUNDARY.split(text)]
    clauses = [p for p in parts if len(p.split()) >= _MIN_WORDS]
    return clauses[:max_clauses] if len(clauses) >= 2 else []
