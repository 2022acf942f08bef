"""`smolit-ner-rules`: invoice and contract fields from labelled lines and fixed phrasings, by regular expressions.

No statistical model: it reads what a label announces (`Invoice number:`, `Bill to:`, `Total due:`), the usual
contract phrasings (`between X and Y`, `governed by the laws of X`, `for a term of N months`) and any amount with a
currency code or symbol. Fast and exact on the layouts it knows; blind to names and dates nobody labelled.
"""

from __future__ import annotations

import re
import time

from .entity_fields import (
    Extraction,
    FieldValue,
    clean_name,
    document_kind,
    normal_term,
    parse_amount,
    parse_currency,
    parse_date,
)

RULES_MODEL = "smolit-ner-rules"

_SEGMENTS = re.compile(r"\n|(?<=[a-z)][.!?])\s+(?=[A-Z])")
_AMOUNT = re.compile(
    r"(?:(?:EUR|USD|GBP|CHF)\s?|[€$£]\s?)\d[\d,.\s]*\d(?:[.,]\d{2})?|\d[\d,.]*[.,]\d{2}\s?(?:EUR|USD|GBP|CHF)\b"
)
_NUMBER_LABEL = re.compile(
    r"invoice\s*(?:no\.?|number|num\.?|#|id)?\s*[:#]?\s*(?:no\.?\s*)?([A-Z0-9][A-Z0-9/_-]*\d[A-Z0-9/_-]*)",
    re.IGNORECASE,
)
_ISSUE = re.compile(r"(?:invoice date|date of issue|issue date|issued(?: on)?|^\s*date|dated)\s*:?\s*(.+)", re.I | re.M)
_DUE = re.compile(r"(?:due date|payment due|due by|due on|payable by|payable on|due)\s*:?\s*(.+)", re.IGNORECASE)
_SELLER = re.compile(r"^\s*(?:from|seller|supplier|vendor|issued by)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_BUYER = re.compile(
    r"^\s*(?:bill to|billed to|to|buyer|customer|client|sold to)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE
)
_TOTAL = re.compile(r"\b(?:total|amount\s?due|balance\s?due|amount\s?payable)", re.IGNORECASE)  # OCR: `Totaldue:`
_SUBTOTAL = re.compile(r"sub\s*-?\s*total|net\s*total|total\s*net", re.IGNORECASE)
_BETWEEN = re.compile(
    r"(?:between|parties\s*:)\s+(.+?)(?:,\s*an?\s[^,]+,)?\s+and\s+(.+?)(?=\s*\(|,|;|\.\s|\.$|$)",
    re.IGNORECASE | re.MULTILINE,
)
_EFFECTIVE = re.compile(
    r"(?:effective(?: date)?|dated|as of|entered into on|made on|commenc\w* on|start date)\s*:?\s*"
    r"(?:as of\s*)?(.{4,40})",
    re.IGNORECASE,
)
_TERM = re.compile(
    r"(?:term|period|duration)\b[^.\n]{0,60}?((?:\d+|one|two|three|four|five|six|twelve|eighteen)\s*(?:\(\d+\)\s*)?"
    r"(?:months?|years?))|(?:terminat\w*|expires?|until|ends?)\s+(?:on\s+)?([^.\n]{6,30})",
    re.IGNORECASE,
)
_LAW = re.compile(
    r"(?:laws of|governing law\s*:|jurisdiction\s*:\s*(?:the\s+)?courts of)\s*(?:the\s+)?(?:state of\s+)?"
    r"([A-Z][A-Za-z]+(?:\s+(?:and\s+)?[A-Z][A-Za-z]+)*)",
    re.IGNORECASE,
)


def _segments(text: str) -> list[str]:
    return [s for s in _SEGMENTS.split(text) if s.strip()]


def _first(pattern: re.Pattern[str], text: str, parse: object) -> str | None:
    for m in pattern.finditer(text):
        value = parse(m.group(1))  # type: ignore[operator]
        if value:
            return str(value)
    return None


def _seller_from_header(text: str) -> str | None:
    """The first line names the issuer on most invoices (a letterhead), unless it is a title or a labelled line."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first or ":" in first or any(ch.isdigit() for ch in first) or (first.isupper() and len(first) < 12):
        return None
    return clean_name(first) if len(first.split()) <= 8 else None


def invoice_fields(text: str) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    if m := _NUMBER_LABEL.search(text):
        fields["invoice_number"] = m.group(1).rstrip(".")
    totals: list[tuple[str, str | None]] = []
    lines: list[str] = []
    for segment in _segments(text):
        amounts = [(parse_amount(a), parse_currency(a)) for a in _AMOUNT.findall(segment)]
        amounts = [(a, c) for a, c in amounts if a]
        if not amounts or _SUBTOTAL.search(segment):
            continue
        if _TOTAL.search(segment):
            totals.append(amounts[0])  # type: ignore[arg-type]
        else:
            lines += [a for a, _ in amounts if a]
    for segment in _segments(text):
        if "due_date" not in fields and (m := _DUE.search(segment)) and (d := parse_date(m.group(1))):
            fields["due_date"] = d
        if "issue_date" in fields or re.search(r"\bdue\b", segment, re.IGNORECASE):
            continue
        if (m := _ISSUE.search(segment)) and (d := parse_date(m.group(1))):
            fields["issue_date"] = d
    if seller := (_first(_SELLER, text, clean_name) or _seller_from_header(text)):
        fields["seller"] = seller
    if buyer := _first(_BUYER, text, clean_name):
        fields["buyer"] = buyer
    if totals:
        fields["total"] = totals[-1][0]
        if totals[-1][1]:
            fields["currency"] = totals[-1][1]
    if lines:
        fields["line_amounts"] = tuple(lines)
    if "currency" not in fields and (currency := parse_currency(" ".join(_AMOUNT.findall(text)))):
        fields["currency"] = currency
    return fields


def contract_fields(text: str) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    if m := _BETWEEN.search(text):
        parties = tuple(p for p in (clean_name(m.group(1)), clean_name(m.group(2))) if p)
        if parties:
            fields["parties"] = parties
    if effective := _first(_EFFECTIVE, text, parse_date):
        fields["effective_date"] = effective
    for m in _TERM.finditer(text):
        if term := normal_term(m.group(1) or m.group(2) or ""):
            fields["term"] = term
            break
    if m := _LAW.search(text):
        fields["governing_law"] = clean_name(m.group(1))
    amounts = [a for raw in _AMOUNT.findall(text) if (a := parse_amount(raw))]
    if amounts:
        fields["amounts"] = tuple(amounts)
    return fields


class RulesExtractor:
    """The regex candidate; nothing to load."""

    name = RULES_MODEL

    def extract(self, text: str, kind: str | None = None) -> Extraction:
        started = time.perf_counter()
        kind = kind or document_kind(text)
        fields = invoice_fields(text) if kind == "invoice" else contract_fields(text) if kind == "contract" else {}
        return Extraction(kind, fields, self.name, time.perf_counter() - started)
