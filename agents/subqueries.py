"""Agent-to-agent subqueries, pure logic: whom to consult about which clause, and how subanswers merge in.

No I/O here: the runtime parks partial answers in Postgres (`parking.py`) and these functions decide and combine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from smolit.contracts import AgentCard, Clause, Source, SubqueryAnswered
from smolit.infra.llm import Passage


@dataclass(frozen=True)
class SubqueryPolicy:
    """Loop guard, budget and timing of subqueries (settings `SMOLIT_SUBQUERY_*`, `SMOLIT_CONSULT_THRESHOLD`)."""

    max_depth: int = 2
    budget: int = 2
    timeout_s: float = 8.0
    consult_threshold: float = 0.35


@dataclass(frozen=True)
class Consult:
    """Ask `agent` about `clause`."""

    agent: str
    clause: Clause


def plan_consults(
    card: AgentCard,
    clauses: Sequence[Clause],
    *,
    chain: Sequence[str],
    depth: int,
    budget: int,
    policy: SubqueryPolicy,
) -> list[Consult]:
    """Clauses the card's agent should hand to an agent it may consult.

    A clause goes to agent X when the card lists X in `consults`, X scores highest on that clause and at least
    `consult_threshold`, X is not already in the chain of askers (no cycles), and depth and budget allow it.
    """
    if not card.consults or depth >= policy.max_depth or budget <= 0:
        return []
    asked = {*chain, card.name}
    consults: list[Consult] = []
    for target in card.consults:
        if target in asked:
            continue
        owned = [
            c
            for c in clauses
            if c.scores.get(target, 0.0) >= policy.consult_threshold
            and c.scores.get(target, 0.0) == max(c.scores.values())
        ]
        if owned:
            consults.append(Consult(target, max(owned, key=lambda c: c.scores[target])))
    return consults[:budget]


@dataclass(frozen=True)
class SubResult:
    """What became of one subquery: its answer, or why there is none."""

    agent: str
    answer: SubqueryAnswered | None
    """`None`: no answer arrived before the deadline."""


_CITATION = re.compile(r"\[(\d+)\]")


def _shift_citations(text: str, offset: int) -> str:
    return _CITATION.sub(lambda m: f"[{int(m.group(1)) + offset}]", text) if offset else text


def merge_answers(
    own: str, own_sources: Sequence[Source], results: Sequence[SubResult], *, quote: bool = True
) -> tuple[str, list[Source]]:
    """The asking agent's answer followed by each consulted agent's part, citations renumbered to the joint sources.

    A missing or failed subanswer becomes a short note instead, so the user sees what is not covered. With
    `quote=False` (the LLM already wrote the subanswers into `own`) only their sources are appended.
    """
    parts = [own.strip()]
    sources = list(own_sources)
    for result in results:
        answer = result.answer
        if answer is None:
            parts.append(f"Note: the {result.agent} agent did not answer in time, so this part is not covered.")
        elif answer.error:
            parts.append(f"Note: the {result.agent} agent could not answer ({answer.error}).")
        else:
            if quote:
                parts.append(f"From the {result.agent} agent: {_shift_citations(answer.answer.strip(), len(sources))}")
            sources.extend(answer.sources)
    return "\n\n".join(p for p in parts if p), sources


_SEGMENT_END = re.compile(r"(?<=\])[.!?]?\s+")  # "… notice. [1] Next" and "… notice [1]. Next" both end at [1]
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.!?,;:])")


def _uncited(segment: str) -> str:
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _CITATION.sub("", segment)).strip()


def subanswer_passages(answer: SubqueryAnswered) -> list[Passage]:
    """One passage per source of a subanswer: the subanswer's sentences that cite it (else the source's snippet),
    so an LLM given them after its own passages cites the joint source list in order."""
    segments = _SEGMENT_END.split(answer.answer)
    passages = []
    for number, source in enumerate(answer.sources, start=1):
        cited = [_uncited(seg) for seg in segments if f"[{number}]" in seg]
        text = " ".join(c for c in cited if c) or source.snippet
        passages.append(Passage(text=text, source=source.source, title=source.title, score=source.score))
    return passages
