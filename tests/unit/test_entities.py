"""The `entities` step's pure logic: normal forms, the rules candidate, the spaCy field mapping, the plausibility
check, the per-field vote, text features, the card's `pipeline` validation, and the step's selection, ensemble,
timeout and outcomes (fake extractors stand in for models where only the step's policy is under test)."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from smolit.agents.entities import (
    EntitiesFailed,
    EntityPolicy,
    EntityStep,
    NerLoader,
    TextCandidate,
    annotate,
    summary,
)
from smolit.agents.entity_fields import (
    Extraction,
    check,
    clean_name,
    coverage,
    document_kind,
    normal_term,
    parse_amount,
    parse_currency,
    parse_date,
    text_features,
    vote,
)
from smolit.agents.entity_rules import RulesExtractor
from smolit.agents.ingest import FileError, RawDocument
from smolit.contracts import AgentCard, ModelOutcomeRecorded
from smolit.entity_docs import random_contract_doc, random_invoice_doc, sample_documents
from smolit.infra.ner_models import NER_VARIANTS

from ..invoices import INVOICE_TEXT as INVOICE

CONTRACT = """SERVICE AGREEMENT
This Service Agreement is entered into as of 1 March 2026 by and between Acme Robotics GmbH ("Provider") and Blue
Harbour Logistics Ltd ("Client").
1. Term. This Agreement shall remain in force for a term of 24 months from the Effective Date.
2. Fees. Client shall pay Provider a monthly fee of EUR 4,200.00.
3. Governing law. This Agreement shall be governed by the laws of Germany."""


def test_amounts_dates_currencies_and_names_have_one_normal_form() -> None:
    """US and European separators give the same amount; four date styles give the same ISO date; impossible
    dates and text without numbers give None; quotes, roles and trailing dots are not part of a name."""
    assert parse_amount("EUR 1,284.50") == parse_amount("1.284,50 EUR") == parse_amount("€1284.50") == "1284.50"
    assert parse_amount("CHF 12") == "12.00" and parse_amount("no amount") is None
    dates = ("2026-03-04", "04.03.2026", "4 March 2026", "March 4, 2026")
    assert {parse_date(d) for d in dates} == {"2026-03-04"}
    assert parse_date("31.02.2026") is None and parse_date("soon") is None
    assert (parse_currency("£20.00"), parse_currency("20.00 CHF"), parse_currency("20.00")) == ("GBP", "CHF", None)
    assert clean_name('"Blue Harbour Logistics Ltd." ("Client")') == "Blue Harbour Logistics Ltd"
    assert normal_term("a period of twelve months") == "12 months" and normal_term("until 2027-02-28") == "2027-02-28"


def test_the_rules_read_a_labelled_invoice_and_a_contract() -> None:
    """Every field of the labelled invoice and of the clause contract, in normal form; the output passes its check."""
    invoice = RulesExtractor().extract(INVOICE)
    assert invoice.kind == "invoice"
    assert invoice.fields == {
        "invoice_number": "INV-2026-0417",
        "issue_date": "2026-11-03",
        "due_date": "2026-12-03",
        "seller": "Nordwind Office Supplies GmbH",
        "buyer": "Meridian IT Services BV",
        "total": "1284.50",
        "currency": "EUR",
        "line_amounts": ("230.00", "840.42", "214.08"),
    }
    assert all(check(invoice).values()) and coverage(invoice) == 1.0
    contract = RulesExtractor().extract(CONTRACT.replace("Blue\n", "Blue "))
    assert contract.fields == {
        "parties": ("Acme Robotics GmbH", "Blue Harbour Logistics Ltd"),
        "effective_date": "2026-03-01",
        "term": "24 months",
        "governing_law": "Germany",
        "amounts": ("4200.00",),
    }


def test_the_plausibility_check_catches_inconsistent_fields() -> None:
    """A total that is not the sum of the lines, an unparsable date, a due date before the issue date, a contract
    with one party, and an empty output each fail their check; checks that do not apply are absent."""
    good = {"issue_date": "2026-01-10", "due_date": "2026-02-09", "total": "30.00", "line_amounts": ("10.00", "20.00")}
    assert check(Extraction("invoice", good, "m")) == {
        "fields": True,
        "amounts": True,
        "dates": True,
        "due_after_issue": True,
        "total_matches_lines": True,
    }
    assert check(Extraction("invoice", good | {"total": "31.00"}, "m"))["total_matches_lines"] is False
    assert check(Extraction("invoice", good | {"due_date": "2026-01-01"}, "m"))["due_after_issue"] is False
    assert check(Extraction("invoice", {"issue_date": "2026-13-01"}, "m"))["dates"] is False
    assert check(Extraction("contract", {"parties": ("Acme",)}, "m"))["parties"] is False
    assert check(Extraction("invoice", {}, "m")) == {"fields": False}


def test_the_vote_takes_the_heaviest_value_per_field_and_keeps_fields_only_one_candidate_read() -> None:
    """Two of three agree: their value wins; a heavier single candidate outvotes two light ones; a tie goes to the
    earlier candidate; a field one candidate alone found is kept."""
    a = Extraction("invoice", {"total": "10.00", "seller": "A"}, "a", 0.1)
    b = Extraction("invoice", {"total": "12.00", "seller": "B"}, "b", 0.2)
    c = Extraction("invoice", {"total": "12.00", "buyer": "C"}, "c", 0.3)
    voted = vote([a, b, c])
    assert voted.fields == {"total": "12.00", "seller": "A", "buyer": "C"}
    assert voted.model == "vote(a,b,c)" and voted.seconds == pytest.approx(0.6)
    assert vote([a, b, c], {"a": 3.0, "b": 1.0, "c": 1.0}).fields["total"] == "10.00"
    with pytest.raises(ValueError):
        vote([])


def test_text_features_tell_kind_layout_and_writing_styles() -> None:
    """The labelled invoice writes amounts with codes and dates in words and numbers; the contract is prose."""
    inv = text_features(INVOICE)
    assert inv.buckets() == {"kind": "invoice", "currency": "code", "dates": "mixed", "layout": "fields"}
    con = text_features(CONTRACT)
    assert (con.kind, con.layout, con.language) == ("contract", "prose", "en")
    assert document_kind("Minutes of the weekly team meeting.") == "other"
    rules, ruler = (
        TextCandidate.of(NER_VARIANTS["smolit-ner-rules"]),
        TextCandidate.of(NER_VARIANTS["smolit-ner-ruler"]),
    )
    assert rules.fit(inv) == 1.0 and rules.fit(con) < 1.0 and ruler.fit(con) == 1.0


def test_the_spacy_candidates_map_entities_to_fields_and_the_ruler_adds_coded_amounts() -> None:
    """Real en_core_web_sm: the ruler variant labels `EUR 1,284.50` as MONEY and so finds the total; the parties
    and the governing law of the contract come from the NER's ORG and GPE entities."""
    loader = NerLoader()
    ruler = loader("smolit-ner-ruler", "1", {})
    assert loader("smolit-ner-ruler", "2", {}) is ruler  # one loaded pipeline per candidate
    invoice = ruler.extract(INVOICE)
    assert (invoice.fields["total"], invoice.fields["currency"]) == ("1284.50", "EUR")
    assert invoice.fields["line_amounts"] == ("230.00", "840.42", "214.08")
    assert invoice.fields["due_date"] == "2026-12-03" and invoice.fields["invoice_number"] == "INV-2026-0417"
    plain = loader("smolit-ner", "1", {}).extract(INVOICE)
    assert plain.fields.get("total") != "1284.50"  # the statistical model alone does not see coded amounts as MONEY
    contract = ruler.extract(CONTRACT.replace("Blue\n", "Blue "))
    assert contract.fields["parties"] == ("Acme Robotics GmbH", "Blue Harbour Logistics Ltd")
    assert contract.fields["governing_law"] == "Germany" and contract.fields["effective_date"] == "2026-03-01"
    with pytest.raises(EntitiesFailed, match="known"):
        loader("x", "1", {"variant": "smolit-ner-gpt"})


class Fixed:
    """A fake extractor with fixed fields; `release` makes it wait first, like a stuck model."""

    def __init__(self, name: str, fields: dict, release: threading.Event | None = None) -> None:
        self.name, self.fields, self.release, self.calls = name, fields, release, 0

    def extract(self, text: str, kind: str | None = None) -> Extraction:
        self.calls += 1
        if self.release is not None:
            self.release.wait(5)
        return Extraction(kind or "invoice", dict(self.fields), self.name, 0.01)


def test_the_step_selects_one_candidate_and_records_its_outcome() -> None:
    """Two candidates, no memory: the labelled invoice goes to the rules (fit); only that candidate runs; one
    `ModelOutcomeRecorded` with step `entities`, its check result and coverage; a note is not extracted."""
    rules = Fixed("smolit-ner-rules", {"total": "30.00", "line_amounts": ("10.00", "20.00")})
    ner = Fixed("smolit-ner", {"total": "99.00"})
    events: list[ModelOutcomeRecorded] = []
    step = EntityStep(
        ["smolit-ner", "smolit-ner-rules"],
        extractors={"smolit-ner": ner, "smolit-ner-rules": rules},
        on_outcome=events.append,
        agent="finance",
    )
    result = step.extract(INVOICE, "inv.txt")
    assert result is not None and result.models == ("smolit-ner-rules",) and ner.calls == 0
    assert result.passed and result.metadata()["model"] == "smolit-ner-rules"
    assert set(result.metadata()["selection"]["scores"]) == {"smolit-ner", "smolit-ner-rules"}
    [event] = events
    assert (event.model, event.step, event.success, event.selected_by) == (
        "smolit-ner-rules",
        "entities",
        True,
        "selector",
    )
    assert event.confidence == pytest.approx(2 / 8) and event.features["kind"] == "invoice"
    assert step.extract("Minutes of the weekly team meeting.") is None and len(events) == 1


def test_the_ensemble_runs_every_candidate_and_survives_a_timeout() -> None:
    """With `vote`, a candidate that exceeds the timeout gives nothing (recorded as a failed outcome) and the vote
    uses the others; when every candidate fails the step raises."""
    release = threading.Event()
    slow = Fixed("smolit-ner", {"total": "1.00"}, release)
    rules = Fixed("smolit-ner-rules", {"total": "30.00", "line_amounts": ("10.00", "20.00")})
    events: list[ModelOutcomeRecorded] = []
    step = EntityStep(
        ["smolit-ner", "smolit-ner-rules"],
        EntityPolicy(timeout_s=0.2, ensemble=True),
        extractors={"smolit-ner": slow, "smolit-ner-rules": rules},
        on_outcome=events.append,
    )
    try:
        result = step.extract(INVOICE)
        assert result is not None and result.models == ("smolit-ner", "smolit-ner-rules")
        assert result.extraction.fields["total"] == "30.00" and "timed out" in result.metadata()["errors"]["smolit-ner"]
        assert [(e.model, e.success, e.selected_by) for e in events] == [
            ("smolit-ner", False, "ensemble"),
            ("smolit-ner-rules", True, "ensemble"),
        ]
        alone = EntityStep(["smolit-ner"], EntityPolicy(timeout_s=0.2), extractors={"smolit-ner": slow})
        with pytest.raises(EntitiesFailed, match=r"timed out after 0\.2 s"):
            alone.extract(INVOICE)
    finally:
        release.set()
        step.close()


def test_annotate_stores_fields_and_a_fields_chunk_only_when_the_check_passes() -> None:
    """A plausible invoice gets `entities` metadata and a fields chunk (which changes its digest); an implausible
    one, or one with a single field, only the metadata; other documents and reader errors pass through unchanged."""
    good = Fixed("smolit-ner-rules", {"total": "30.00", "currency": "EUR", "line_amounts": ("10.00", "20.00")})
    docs = [
        RawDocument("a.txt", INVOICE, "Invoice A"),
        RawDocument("b.txt", "Minutes of the weekly team meeting."),
        FileError("c.png", "needs OCR"),
    ]
    out = list(annotate(docs, EntityStep(["smolit-ner-rules"], extractors={"smolit-ner-rules": good})))
    assert out[1:] == docs[1:]
    meta = out[0].metadata["entities"]
    assert meta["fields"]["line_amounts"] == ["10.00", "20.00"] and meta["check"]["passed"] is True
    assert out[0].extra_chunks == (
        "Invoice fields extracted by smolit-ner-rules from Invoice A.\nTotal amount: EUR 30.00.\n"
        "Line amounts: EUR 10.00, EUR 20.00.",
    )
    assert out[0].digest != docs[0].digest
    bad = Fixed("smolit-ner-rules", {"total": "31.00", "line_amounts": ("10.00", "20.00")})
    [flagged] = list(annotate(docs[:1], EntityStep(["smolit-ner-rules"], extractors={"smolit-ner-rules": bad})))
    assert flagged.extra_chunks == () and flagged.metadata["entities"]["check"]["total_matches_lines"] is False
    lone = Fixed("smolit-ner-rules", {"seller": "Nordwind"})
    [single] = list(annotate(docs[:1], EntityStep(["smolit-ner-rules"], extractors={"smolit-ner-rules": lone})))
    assert single.extra_chunks == () and single.metadata["entities"]["check"]["passed"] is True


def test_the_summary_names_parties_and_formats_amounts() -> None:
    """Contract fields read as sentences: both parties joined by `and`, amounts with thousands separators."""
    text = summary(Extraction("contract", {"parties": ("A GmbH", "B Ltd"), "amounts": ("4200.00",)}, "m"))
    assert text == "Contract fields extracted by m.\nParties: A GmbH and B Ltd.\nAmounts: 4,200.00."


def test_the_card_pipeline_declares_entity_candidates_and_an_ensemble() -> None:
    """A valid entities pipeline; unknown candidates, ensemble modes or steps, and an ensemble of one, are errors
    that name what is known."""
    card = AgentCard.model_validate(
        {
            "name": "legal",
            "description": "Contracts.",
            "pipeline": {
                "ingest": ["ocr", "entities"],
                "candidates": {"entities": ["smolit-ner-rules", "smolit-ner"]},
                "ensemble": {"entities": "vote"},
            },
        }
    )
    assert card.pipeline.candidates_for("entities") == ("smolit-ner-rules", "smolit-ner")
    assert AgentCard(name="x", description="d").pipeline.candidates_for("entities") == ("smolit-ner-ruler",)
    bad = {
        "unknown entities candidate(s) ['smolit-bert']": {"candidates": {"entities": ["smolit-bert"]}},
        "unknown ensemble mode 'stack'": {
            "candidates": {"entities": ["smolit-ner", "smolit-ner-rules"]},
            "ensemble": {"entities": "stack"},
        },
        "needs at least two `candidates`": {
            "candidates": {"entities": ["smolit-ner"]},
            "ensemble": {"entities": "vote"},
        },
        "ensemble for unknown step 'sentiment'": {"ensemble": {"sentiment": "vote"}},
    }
    for message, pipeline in bad.items():
        with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            AgentCard.model_validate(
                {"name": "x", "description": "d", "pipeline": {"ingest": ["entities"], **pipeline}}
            )


def test_the_generator_is_seeded_and_its_truth_is_in_normal_form() -> None:
    """Same seed, same documents; every layout appears; true dates and amounts are in the step's normal form."""
    import random

    assert sample_documents(12, 3) == sample_documents(12, 3)
    assert {f"{d.kind}/{d.layout}" for d in sample_documents(12, 3)} == {
        "invoice/letterhead",
        "invoice/form",
        "invoice/prose",
        "contract/clauses",
        "contract/labelled",
        "contract/recital",
    }
    doc = random_invoice_doc(random.Random(1))
    assert parse_date(str(doc.truth["issue_date"])) == doc.truth["issue_date"]
    assert all(check(Extraction("invoice", doc.truth, "truth")).values())
    assert all(check(Extraction("contract", random_contract_doc(random.Random(2)).truth, "truth")).values())
