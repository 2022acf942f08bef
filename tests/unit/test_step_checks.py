"""Post-processing checks declared in a card (`pipeline.checks`): validated, and applied by the steps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from smolit.agents.entities import EntityPolicy
from smolit.agents.entity_fields import Extraction
from smolit.agents.ocr import OcrPolicy, OcrStep
from smolit.contracts import AgentCard, StepChecks
from smolit.infra.ocr import OcrLine


def _card(pipeline: dict) -> AgentCard:
    return AgentCard(name="billing", description="Invoices.", pipeline=pipeline)


def test_checks_are_validated_per_step_with_clear_errors() -> None:
    checks = {"ocr": {"min_chars": 40}, "entities": {"require": ["total"]}}
    card = _card({"ingest": ["ocr", "entities"], "checks": checks})
    assert card.pipeline.checks_for("ocr").min_chars == 40
    assert card.pipeline.checks_for("entities").require == ("total",)
    assert card.pipeline.checks_for("ocr").require == () and _card({}).pipeline.checks_for("ocr") == StepChecks()
    with pytest.raises(ValidationError, match=r"do not apply to step 'ocr'; its checks: \['min_chars', 'min_conf"):
        _card({"ingest": ["ocr"], "checks": {"ocr": {"require": ["total"]}}})
    with pytest.raises(ValidationError, match="unknown entity field"):
        _card({"ingest": ["entities"], "checks": {"entities": {"require": ["iban"]}}})
    with pytest.raises(ValidationError, match="not in `ingest` or `request`"):
        _card({"ingest": ["ocr"], "checks": {"entities": {"require": ["total"]}}})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        _card({"ingest": ["ocr"], "checks": {"ocr": {"min_confidence": 1.5}}})


def test_a_cards_ocr_thresholds_replace_the_settings_and_decide_plausibility() -> None:
    base = OcrPolicy(timeout_s=5, min_chars=12, min_confidence=0.7)
    strict = base.with_checks(StepChecks(min_chars=40))
    assert (strict.timeout_s, strict.min_chars, strict.min_confidence) == (5, 40, 0.7)

    class Engine:
        name = "fake"

        def read(self, image: object) -> list[OcrLine]:
            return [OcrLine("Invoice INV-1 total 12.00", 0.95, 0.0, 10.0, 0.0)]

    step = OcrStep(lambda: Engine(), base)  # type: ignore[arg-type,return-value]
    assert step.read_with(Engine(), [object()]).chars >= 12  # type: ignore[arg-type,list-item]
    with pytest.raises(Exception, match="need 40"):
        step.read_with(Engine(), [object()], policy=strict)  # type: ignore[arg-type,list-item]
    step.close()


def test_required_entity_fields_apply_to_their_kind_only() -> None:
    policy = EntityPolicy(require=("invoice_number", "due_date", "parties"))
    invoice = Extraction("invoice", {"invoice_number": "INV-1", "total": "12.00"}, "m")
    assert policy.checks(invoice)["required"] is False  # no due date
    assert policy.checks(Extraction("invoice", invoice.fields | {"due_date": "2026-12-03"}, "m"))["required"] is True
    assert "required" not in EntityPolicy().checks(invoice)
    contract = Extraction("contract", {"parties": ("Acme GmbH", "Blue Ltd")}, "m")
    assert policy.checks(contract)["required"] is True  # the invoice fields do not apply to a contract
