"""The `entities` step's contract and pure logic: typed fields of invoices and contracts, their normal forms, the
plausibility check, the text features model selection buckets on, and the per-field vote of an ensemble.

Contract of the step: input is a document's text (OCR text included); output is an `Extraction` with the document
kind (`invoice`, `contract`) and typed fields in normal form so candidates can be compared and voted on:
dates ISO `YYYY-MM-DD`, amounts `1284.50` (dot decimals, no separators), currencies ISO codes, names as printed
(trailing punctuation dropped), lists (parties, line amounts) in document order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from smolit.contracts.agents import CONTRACT_FIELDS, INVOICE_FIELDS

FieldValue = str | tuple[str, ...]

FIELDS = {"invoice": INVOICE_FIELDS, "contract": CONTRACT_FIELDS}
LIST_FIELDS = frozenset({"line_amounts", "parties", "amounts"})
DATE_FIELDS = frozenset({"issue_date", "due_date", "effective_date"})
AMOUNT_FIELDS = frozenset({"total", "line_amounts", "amounts"})

CURRENCY_SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP"}
CURRENCY_CODES = ("EUR", "USD", "GBP", "CHF")
MONTHS = (
    "january february march april may june july august september october november december".split()  # noqa: SIM905
)
_MONTH = {name: i for i, name in enumerate(MONTHS, start=1)} | {name[:3]: i for i, name in enumerate(MONTHS, 1)}


@dataclass(frozen=True)
class Extraction:
    """What one model (or the ensemble) extracted from one document."""

    kind: str
    """`invoice`, `contract` or `other` (nothing is extracted from other documents)."""
    fields: dict[str, FieldValue]
    model: str
    seconds: float = 0.0

    def metadata(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.fields.items()}


# --- document kind and text features --------------------------------------------------------------------------

# No word boundaries and optional spaces: OCR output often glues words together (`Totaldue:EUR1,284.50`).
_INVOICE_WORDS = re.compile(r"invoice|bill\s?to|amount\s?due|total\s?due|vat|tax|payment\s?due|payable", re.I)
_CONTRACT_WORDS = re.compile(r"\b(agreement|contract|between|governed by|hereby|parties|term)\b", re.IGNORECASE)
_CODE_AMOUNT = re.compile(r"\b(?:EUR|USD|GBP|CHF)\s?\d|\d\s?(?:EUR|USD|GBP|CHF)\b")
_SYMBOL_AMOUNT = re.compile(r"[€$£]\s?\d")
_ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_NUMERIC_DATE = re.compile(r"\b\d{1,2}[./]\d{1,2}[./]\d{4}\b")
_WORD_DATE = re.compile(r"\b(?:" + "|".join(m[:3] for m in MONTHS) + r")[a-z]*\.?\s+\d{1,2}|\d{1,2}\s+(?:"
                        + "|".join(m[:3] for m in MONTHS) + r")[a-z]*\b", re.IGNORECASE)  # fmt: skip
_ENGLISH = re.compile(r"\b(the|and|of|to|for|shall|is|this|by|due)\b", re.IGNORECASE)


def document_kind(text: str) -> str:
    """`invoice` or `contract` by their vocabulary (the one with more distinct cue words, at least two; an invoice
    also needs an amount with cents), else `other`."""
    invoice = len({re.sub(r"\s", "", m.lower()) for m in _INVOICE_WORDS.findall(text)})
    if not re.search(r"\d[.,]\d{2}\b", text):
        invoice = 0
    contract = len({m.lower() for m in _CONTRACT_WORDS.findall(text)})
    if max(invoice, contract) < 2:
        return "other"
    return "invoice" if invoice >= contract else "contract"


@dataclass(frozen=True)
class TextFeatures:
    """What can be measured on a text before extraction (regexes only): what the model memory buckets on."""

    kind: str
    currency: str
    """How amounts are written: `code` (EUR 1,284.50), `symbol` (€1,284.50), `mixed` or `none`."""
    dates: str
    """How dates are written: `iso`, `numeric` (04.03.2026), `words` (4 March 2026), `mixed` or `none`."""
    layout: str
    """`fields` (mostly `label: value` lines) or `prose`."""
    language: str
    length: int

    def buckets(self) -> dict[str, str]:
        return {"kind": self.kind, "currency": self.currency, "dates": self.dates, "layout": self.layout}

    def describe(self, domain: str | None = None) -> str:
        text = (
            f"{self.kind} text in {self.layout} layout, amounts written with currency {self.currency}, dates written"
            f" as {self.dates}, language {self.language}"
        )
        return text + (f", {domain} documents" if domain else "")


def _style(found: Mapping[str, bool]) -> str:
    present = [name for name, hit in found.items() if hit]
    return "none" if not present else present[0] if len(present) == 1 else "mixed"


def text_features(text: str) -> TextFeatures:
    lines = [line for line in text.splitlines() if line.strip()]
    labelled = sum(1 for line in lines if re.match(r"^\s*[A-Za-z][\w #/.-]{0,30}:\s*\S", line))
    words = re.findall(r"[A-Za-z]+", text)
    english = len(_ENGLISH.findall(text)) / max(1, len(words))
    return TextFeatures(
        kind=document_kind(text),
        currency=_style({"code": bool(_CODE_AMOUNT.search(text)), "symbol": bool(_SYMBOL_AMOUNT.search(text))}),
        dates=_style(
            {
                "iso": bool(_ISO_DATE.search(text)),
                "numeric": bool(_NUMERIC_DATE.search(text)),
                "words": bool(_WORD_DATE.search(text)),
            }
        ),
        layout="fields" if lines and labelled >= 0.4 * len(lines) else "prose",
        language="en" if english >= 0.05 else "other",
        length=len(text),
    )


# --- normal forms ------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d{1,3}(?:[,.\s]\d{3})+(?:[.,]\d{2})?|\d+(?:[.,]\d{2})?")


def parse_amount(text: str) -> str | None:
    """`1,284.50`, `1.284,50`, `1284.5`? -> `1284.50` (the last `.` or `,` followed by two digits is the decimal
    separator, others group thousands); None when there is no number."""
    found = _NUMBER.search(text.replace("\u00a0", " "))
    if not found:
        return None
    raw = found.group(0).replace(" ", "")
    whole, cents = raw, "00"
    if len(raw) > 3 and raw[-3] in ".,":
        whole, cents = raw[:-3], raw[-2:]
    try:
        value = Decimal(re.sub(r"[.,]", "", whole)) + Decimal(cents) / 100
    except InvalidOperation:
        return None
    return f"{value:.2f}"


def parse_currency(text: str) -> str | None:
    for symbol, code in CURRENCY_SYMBOLS.items():
        if symbol in text:
            return code
    found = re.search(r"(?<![A-Za-z])(EUR|USD|GBP|CHF)(?![A-Za-z])", text)  # `EUR1,284.50` in OCR text too
    return found.group(1) if found else None


def parse_date(text: str) -> str | None:
    """ISO date from `2026-03-04`, `04.03.2026` / `04/03/2026` (day first), `4 March 2026`, `March 4, 2026`."""
    text = text.strip()
    parts: tuple[int, int, int] | None = None
    if m := re.search(r"(\d{4})-(\d{1,2})-(\d{1,2})", text):
        parts = (int(m[1]), int(m[2]), int(m[3]))
    elif m := re.search(r"(\d{1,2})[./](\d{1,2})[./](\d{4})", text):
        parts = (int(m[3]), int(m[2]), int(m[1]))
    elif m := re.search(r"(\d{1,2})(?:st|nd|rd|th)?\s+(?:day\s+of\s+)?([A-Za-z]{3,9})\.?,?\s+(\d{4})", text):
        month = _MONTH.get(m[2].lower()) or _MONTH.get(m[2].lower()[:3])
        parts = (int(m[3]), month, int(m[1])) if month else None
    elif m := re.search(r"([A-Za-z]{3,9})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", text):
        month = _MONTH.get(m[1].lower()) or _MONTH.get(m[1].lower()[:3])
        parts = (int(m[3]), month, int(m[2])) if month else None
    if parts is None:
        return None
    try:
        return date(*parts).isoformat()
    except ValueError:
        return None


_TAIL = re.compile(r"[\s,;:.]+$")


def clean_name(text: str) -> str:
    """A party or company name as printed, without quotes, a role in parentheses, a leading `the` or trailing
    punctuation (`Ltd.` and `Ltd` compare equal: a sentence may end on the dot)."""
    text = re.sub(r"\s*\(.*$", "", text.strip())
    text = re.sub(r"^the\s+", "", _TAIL.sub("", text.strip("\"'“” ")), flags=re.IGNORECASE)
    return _TAIL.sub("", text.strip("\"'“” "))


def normal_term(text: str) -> str | None:
    """`24 months`, `two years` -> `24 months` / `2 years`; a termination date -> its ISO date."""
    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "twelve": 12, "eighteen": 18}
    if m := re.search(r"(\d+|" + "|".join(words) + r")\s*(?:\(\d+\)\s*)?(month|year)s?", text, re.IGNORECASE):
        n = int(m[1]) if m[1].isdigit() else words[m[1].lower()]
        return f"{n} {m[2].lower()}{'s' if n != 1 else ''}"
    return parse_date(text)


# --- plausibility ------------------------------------------------------------------------------------------------


def check(extraction: Extraction) -> dict[str, bool]:
    """Checks that apply to an extraction, each True when it holds: `fields` (at least one), `amounts` (every
    amount parses), `dates` (every date is a real date), `due_after_issue`, `total_matches_lines` (an invoice's
    total equals the sum of its other amounts: items and tax), `parties` (a contract names two distinct parties)."""
    f = extraction.fields
    result = {"fields": bool(f)}
    amounts = [v for k in AMOUNT_FIELDS if k in f for v in _values(f[k])]
    if amounts:
        result["amounts"] = all(re.fullmatch(r"\d+\.\d{2}", a) for a in amounts)
    dates = [str(f[k]) for k in DATE_FIELDS if k in f]
    if dates:
        result["dates"] = all(parse_date(d) == d for d in dates)
    if "issue_date" in f and "due_date" in f and result.get("dates"):
        result["due_after_issue"] = str(f["due_date"]) >= str(f["issue_date"])
    if "total" in f and f.get("line_amounts") and result.get("amounts"):
        lines = sum(Decimal(a) for a in _values(f["line_amounts"]))
        result["total_matches_lines"] = lines == Decimal(str(f["total"]))
    if extraction.kind == "contract" and "parties" in f:
        parties = _values(f["parties"])
        result["parties"] = len(set(parties)) >= 2
    return result


def coverage(extraction: Extraction) -> float:
    """Share of the kind's fields found (the step's own confidence, recorded in the model memory)."""
    names = FIELDS.get(extraction.kind, ())
    return sum(1 for n in names if n in extraction.fields) / len(names) if names else 0.0


def _values(value: FieldValue) -> tuple[str, ...]:
    return value if isinstance(value, tuple) else (value,)


# --- ensemble ----------------------------------------------------------------------------------------------------


@dataclass
class _Ballot:
    weight: float = 0.0
    first: int = 0
    voters: list[str] = field(default_factory=list)


def vote(results: Sequence[Extraction], weights: Mapping[str, float] | None = None) -> Extraction:
    """Per-field weighted vote: each candidate's value for a field gets the candidate's weight (default 1, i.e. a
    majority vote); the value with the most weight wins, ties go to the value of the earlier candidate. A candidate
    that found nothing for a field does not vote on it, so a field one candidate alone can read is kept."""
    if not results:
        raise ValueError("nothing to vote on")
    kind = results[0].kind
    fields: dict[str, FieldValue] = {}
    names = dict.fromkeys(n for r in results for n in r.fields)
    for name in names:
        ballots: dict[FieldValue, _Ballot] = {}
        for order, r in enumerate(results):
            if name not in r.fields:
                continue
            ballot = ballots.setdefault(r.fields[name], _Ballot(first=order))
            ballot.weight += (weights or {}).get(r.model, 1.0)
            ballot.voters.append(r.model)
        fields[name] = max(ballots.items(), key=lambda kv: (kv[1].weight, -kv[1].first))[0]
    model = "vote(" + ",".join(r.model for r in results) + ")"
    return Extraction(kind, fields, model, sum(r.seconds for r in results))
