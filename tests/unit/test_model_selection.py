"""Model selection inside a pipeline: card candidates, page features measured before OCR, the selector's fit /
similarity / memory signals, the model-memory projection, and the selecting OCR step with fake engines."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from smolit.agents.checks import amounts_consistent
from smolit.agents.ocr import OcrFailed, OcrPolicy
from smolit.agents.ocr_selection import SelectingOcrStep, candidate
from smolit.agents.selection import Candidate, ModelMemory, PageFeatures, page_features, select
from smolit.bench_pipelines import random_invoice, render
from smolit.contracts import STEP_CANDIDATES, AgentCard, FeedbackGiven, ModelOutcomeRecorded, decode, encode
from smolit.infra.cards import CardError, load_cards
from smolit.infra.ocr import OCR_VARIANTS, OcrLine

OCR = [candidate(OCR_VARIANTS[n]) for n in ("smolit-ocr-fast", "smolit-ocr", "smolit-ocr-upscale")]
PLAIN = PageFeatures("png", 800, 600, 22.0, "upright", "normal")
UPSIDE_DOWN = PageFeatures("png", 800, 600, 22.0, "upside-down", "normal")
SMALL = PageFeatures("png", 600, 200, 9.0, "upright", "normal")


def _outcome(model: str, features: PageFeatures, success: bool, confidence: float = 0.95) -> ModelOutcomeRecorded:
    return ModelOutcomeRecorded(
        correlation_id=uuid.uuid4(),
        producer="test",
        model=model,
        features=features.buckets(),
        success=success,
        confidence=confidence,
    )


def test_card_lists_candidates_and_names_unknown_ones(tmp_path: Path) -> None:
    """`pipeline.candidates.ocr` keeps card order; an unknown candidate, a step without candidates or candidates
    for a step the card does not run are clear card errors."""
    card = AgentCard.model_validate(
        {
            "name": "inv",
            "description": "d",
            "pipeline": {
                "ingest": ["ocr"],
                "candidates": {"ocr": ["smolit-ocr-fast", "smolit-ocr", "smolit-ocr-fast"]},
            },
        }
    )
    assert card.pipeline.candidates_for("ocr") == ("smolit-ocr-fast", "smolit-ocr")
    plain = AgentCard.model_validate({"name": "x", "description": "d", "pipeline": {"ingest": ["ocr"]}})
    assert plain.pipeline.candidates_for("ocr") == ("smolit-ocr",)
    (tmp_path / "bad.yaml").write_text(
        "name: bad\ndescription: d\npipeline:\n  ingest: [ocr]\n  candidates:\n    ocr: [smolit-ocr, tesseract]\n"
    )
    with pytest.raises(CardError, match=r"(?s)bad\.yaml.*unknown ocr candidate\(s\) \['tesseract'\]; known: \["):
        load_cards(tmp_path)
    with pytest.raises(ValidationError, match=r"candidates given for step\(s\) \['ocr'\] that are not in `ingest`"):
        AgentCard.model_validate({"name": "x", "description": "d", "pipeline": {"candidates": {"ocr": ["smolit-ocr"]}}})
    with pytest.raises(ValidationError, match=r"candidates for unknown step 'ner'"):
        AgentCard.model_validate(
            {"name": "x", "description": "d", "pipeline": {"ingest": ["ocr"], "candidates": {"ner": ["a"]}}}
        )


def test_every_listed_candidate_has_an_engine_configuration() -> None:
    """The names a card may list (contracts) are exactly the OCR variants the adapter can run, default first."""
    assert set(STEP_CANDIDATES["ocr"]) == set(OCR_VARIANTS)
    assert STEP_CANDIDATES["ocr"][0] == "smolit-ocr"
    assert len({(v.use_cls, v.scale, v.box_thresh) for v in OCR_VARIANTS.values()}) == len(OCR_VARIANTS)


def test_outcome_event_round_trips_and_old_payloads_decode() -> None:
    """`ModelOutcomeRecorded` survives the wire; a payload with only the model decodes with the defaults."""
    event = _outcome("smolit-ocr", SMALL, True)
    value, _ = encode(event)
    assert decode(value) == event
    payload = json.loads(value)
    minimal = {k: payload[k] for k in ("event_id", "type", "schema_version", "occurred_at", "correlation_id")}
    old = decode(json.dumps(minimal | {"producer": "old", "model": "smolit-ocr"}).encode())
    assert isinstance(old, ModelOutcomeRecorded) and (old.step, old.success, old.features) == ("ocr", False, {})


@pytest.mark.parametrize(
    ("options", "orientation", "font"),
    [
        ({"size": 26}, "upright", "normal"),
        ({"size": 26, "rotate": 180.8, "noise": 24.0}, "upside-down", "normal"),
        ({"size": 10, "noise": 12.0}, "upright", "small"),
        ({"size": 11, "rotate": 179.2, "ink": 40}, "upside-down", "small"),
    ],
)
def test_page_features_see_orientation_and_print_size(options: dict, orientation: str, font: str) -> None:
    """Seeded invoices: the ragged edge tells upside-down pages, the ink bands tell small print."""
    invoice = random_invoice(random.Random(5))
    image = render(invoice, font="/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", seed=3, **options)
    features = page_features(np.asarray(image.convert("L")), "png")
    assert (features.orientation, features.font) == (orientation, font)


def test_blank_page_has_no_text_height() -> None:
    assert page_features(np.full((100, 200), 255, dtype=np.uint8)).font_px == 0.0


def test_fit_picks_the_first_candidate_that_suits_the_page() -> None:
    """Without memory: a plain page goes to the card's first candidate, an upside-down page away from the one
    without the angle classifier, small print to the upscaling one."""
    assert select(OCR, PLAIN).model == "smolit-ocr-fast"
    assert select(OCR, UPSIDE_DOWN).model == "smolit-ocr"
    assert select(OCR, SMALL).model == "smolit-ocr-upscale"
    assert select(OCR[:1], SMALL).reason == "only candidate"
    with pytest.raises(ValueError, match="no candidates"):
        select([], PLAIN)


def test_similarity_breaks_a_tie_between_equally_fitting_candidates() -> None:
    """Two candidates with the same ranges: the one whose description vector is closer to the task's wins."""
    a, b = Candidate("a", "first"), Candidate("b", "second")
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    assert select([a, b], PLAIN, task_vector=np.array([0.1, 1.0]), candidate_vectors=vectors).model == "b"
    assert select([a, b], PLAIN, task_vector=np.array([1.0, 0.1]), candidate_vectors=vectors).model == "a"


def test_memory_sends_inputs_to_the_model_that_did_well_on_similar_ones() -> None:
    """Equal fit: `a` failed its plausibility check on small print where `b` passed, and passed on plain pages:
    small print goes to `b`, plain pages stay with `a`; without memory both go to `a` (card order)."""
    a, b = Candidate("a", "x", orientations=frozenset({"upright"})), Candidate("b", "x")
    memory = ModelMemory().apply(
        [_outcome("a", SMALL, False) for _ in range(3)]
        + [_outcome("b", SMALL, True) for _ in range(3)]
        + [_outcome("a", PLAIN, True) for _ in range(3)]
    )
    assert select([a, b], SMALL).model == "a"
    assert select([a, b], SMALL, memory=memory).model == "b"
    assert select([a, b], PLAIN, memory=memory).model == "a"
    # In another domain the record still counts, as the nearest evidence (4 of 5 features shared).
    assert select([a, b], SMALL, memory=memory, context={"domain": "legal"}).model == "b"


def test_memory_weighs_evidence_and_counts_each_event_once() -> None:
    """One failure moves a model less than three; a redelivered event and other event types change nothing."""
    failure = _outcome("a", SMALL, False)
    once = ModelMemory().apply([failure, failure])
    assert once.outcomes() == 1
    value, evidence = once.estimate("a", "ocr", SMALL.buckets())
    assert (value, evidence) == (0.0, 1.0)
    thrice = ModelMemory().apply([_outcome("a", SMALL, False) for _ in range(3)])
    assert thrice.estimate("a", "ocr", SMALL.buckets())[1] == 3.0
    # A plain page shares 3 of 4 features with small print: the failures count, at (3/4)^2 weight.
    assert thrice.estimate("a", "ocr", PLAIN.buckets())[1] == pytest.approx(3 * 0.5625)
    # Once the model has outcomes on exactly such pages, only those count.
    thrice.apply([_outcome("a", PLAIN, True, confidence=0.8)])
    assert thrice.estimate("a", "ocr", PLAIN.buckets()) == pytest.approx((0.9, 1.0))
    feedback = FeedbackGiven(correlation_id=uuid.uuid4(), producer="t", rating=1)
    assert ModelMemory().apply([feedback]).outcomes() == 0
    assert ModelMemory().estimate("a", "ocr", SMALL.buckets()) == (0.0, 0.0)


class _Engine:
    def __init__(self, name: str, confidence: float) -> None:
        self.name, self.confidence, self.calls = name, confidence, 0

    def read(self, image: Image.Image) -> list[OcrLine]:
        self.calls += 1
        return [OcrLine("Total due: EUR 1,284.50", self.confidence, 0, 20, 0)]


def test_selecting_step_reads_with_the_chosen_candidate_and_records_its_outcome() -> None:
    """An upside-down page goes to `smolit-ocr`; its outcome is an event (and enters the memory); an implausible
    reading is recorded as a failure and fails the file naming the model."""
    engines = {"smolit-ocr-fast": _Engine("fast", 0.99), "smolit-ocr": _Engine("cls", 0.4)}
    recorded: list[ModelOutcomeRecorded] = []
    step = SelectingOcrStep(
        {name: (lambda e=e: e) for name, e in engines.items()},
        OcrPolicy(),
        agent="inv",
        domain="invoices",
        on_outcome=recorded.append,
    )
    upright = render(random_invoice(random.Random(2)), size=24)
    read = step.read_images([upright], "png", "a.png")
    assert read.model == "smolit-ocr-fast" and engines["smolit-ocr-fast"].calls == 1
    assert read.metadata("ignored")["model"] == "smolit-ocr-fast"
    assert set(read.metadata("x")["selection"]["scores"]) == {"smolit-ocr-fast", "smolit-ocr"}
    with pytest.raises(OcrFailed, match=r"implausible .* \(model smolit-ocr\)"):
        step.read_images([upright.rotate(180)], "png", "b.png")
    assert [(e.model, e.success, e.agent, e.source) for e in recorded] == [
        ("smolit-ocr-fast", True, "inv", "a.png"),
        ("smolit-ocr", False, "inv", "b.png"),
    ]
    assert recorded[1].features["orientation"] == "upside-down" and recorded[1].confidence == 0.4
    assert recorded[1].features["domain"] == "invoices"
    assert step.memory.outcomes() == 2
    step.close()


def test_amounts_check_tells_misread_invoices_and_skips_other_texts() -> None:
    """Generated invoices add up; a total read with a dot for the thousands comma or a wrong digit does not; a
    text without a total line or without other amounts is not checked."""
    rng = random.Random(9)
    invoices = [random_invoice(rng) for _ in range(50)]
    assert all(amounts_consistent("\n".join(inv.lines())) is True for inv in invoices)
    big = next(inv for inv in invoices if "," in inv.total)
    text = "\n".join(big.lines())
    assert amounts_consistent(text.replace(big.total, big.total.replace(",", "."))) is False
    assert amounts_consistent(text.replace(big.total, big.total[:-1] + ("1" if big.total[-1] != "1" else "2"))) is False
    assert amounts_consistent("Totaldue:EUR1,200.00\nPaper x 2  EUR1,000.00\nVAT  EUR200.00") is True
    assert amounts_consistent("Meeting notes\nnothing to add") is None
    assert amounts_consistent("Total due: EUR 12.00") is None


def test_ingest_builds_the_selector_only_for_cards_with_candidates(tmp_path: Path) -> None:
    """No `ocr` step: no OCR; the pool or a card without candidates: the single default model; several candidates
    and no running Smolit: a selecting step with an empty memory."""
    from smolit.agents import OcrStep
    from smolit.infra.settings import Settings
    from smolit.ocr_ingest import ingest_ocr_step

    settings = Settings(data_dir=tmp_path)
    cards = {
        "none": AgentCard.model_validate({"name": "none", "description": "d"}),
        "one": AgentCard.model_validate({"name": "one", "description": "d", "pipeline": {"ingest": ["ocr"]}}),
        "many": AgentCard.model_validate(
            {
                "name": "many",
                "description": "d",
                "pipeline": {"ingest": ["ocr"], "candidates": {"ocr": ["smolit-ocr-fast", "smolit-ocr"]}},
            }
        ),
    }
    assert ingest_ocr_step(settings, cards["none"])[0] is None
    for card in (None, cards["one"]):
        step, close = ingest_ocr_step(settings, card)
        assert type(step) is OcrStep
        close()
    step, close = ingest_ocr_step(settings, cards["many"])
    assert isinstance(step, SelectingOcrStep) and [c.name for c in step.candidates] == ["smolit-ocr-fast", "smolit-ocr"]
    assert step.memory.outcomes() == 0 and step.agent == "many"
    close()
