"""The `ocr` ingest step's pure logic with a fake engine: plausibility, timeout, reading order, readers; the card
`pipeline:` section; the invoice generator's ground truth used by tests and `smolit bench pipelines`."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from smolit.agents import FileError, OcrFailed, OcrPolicy, OcrStep, RawDocument, plausibility, read_documents
from smolit.bench_pipelines import Invoice, cer, digits, extract_total, random_invoice
from smolit.contracts import AgentCard
from smolit.infra.cards import CardError, load_cards
from smolit.infra.ocr import OcrLine, to_text
from smolit.infra.registry import ModelVersion, RegisteredModel
from smolit.infra.settings import Settings
from smolit.models import OCR_MODEL, model_rows, users

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _line(text: str, confidence: float = 0.95, top: float = 0.0, left: float = 0.0) -> OcrLine:
    return OcrLine(text, confidence, top, top + 20, left)


class FakeEngine:
    """Returns fixed lines; `release` (if set) makes it wait first, like a stuck model."""

    name = "fake-ocr"

    def __init__(self, lines: list[OcrLine], release: threading.Event | None = None) -> None:
        self.lines = lines
        self.release = release
        self.calls = 0

    def read(self, image: Image.Image) -> list[OcrLine]:
        self.calls += 1
        if self.release is not None:
            self.release.wait(5)
        return self.lines


INVOICE_LINES = [_line("Total due: EUR 1,284.50", top=50), _line("Invoice INV-2026-0417", top=0)]


def test_plausible_output_passes_and_counts_letters_and_digits() -> None:
    """Enough confident characters pass; the count ignores spaces and punctuation."""
    chars, confidence, problem = plausibility([_line("Total: 12.50", 0.9)], OcrPolicy(min_chars=5))
    assert (chars, problem) == (9, None) and confidence == pytest.approx(0.9)


def test_too_little_text_or_low_confidence_is_implausible() -> None:
    """Few characters, or a low character-weighted mean confidence, give a reason naming the threshold."""
    policy = OcrPolicy(min_chars=10, min_confidence=0.7)
    assert "too little text (3 letters/digits, need 10)" in str(plausibility([_line("a.b c", 0.99)], policy)[2])
    noisy = [_line("xxxxxxxxxx", 0.3), _line("ab", 0.99)]  # 10 chars at 0.3 outweigh 2 at 0.99
    chars, confidence, problem = plausibility(noisy, policy)
    assert chars == 12 and confidence == pytest.approx((10 * 0.3 + 2 * 0.99) / 12)
    assert problem is not None and "mean confidence 0.42 < 0.7" in problem
    assert plausibility([], policy)[2] is not None


def test_boxes_are_read_in_rows_top_to_bottom_then_left_to_right() -> None:
    """Boxes on one row join with two spaces in x order; rows join with newlines in y order."""
    boxes = [_line("EUR 12.00", top=52, left=300), _line("Second", top=100), _line("Item", top=50, left=10)]
    assert to_text(boxes) == "Item  EUR 12.00\nSecond"


def test_the_step_returns_text_and_metadata_and_loads_the_engine_once() -> None:
    """Two images become two blank-line separated blocks; the factory runs on first use only."""
    engine = FakeEngine(INVOICE_LINES)
    built: list[int] = []
    step = OcrStep(lambda: (built.append(1), engine)[1], OcrPolicy(min_chars=5))
    assert built == []
    read = step.read_images([Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8))])
    step.read_images([Image.new("RGB", (8, 8))])
    assert built == [1] and engine.calls == 3
    block = "Invoice INV-2026-0417\nTotal due: EUR 1,284.50"
    assert read.text == f"{block}\n\n{block}" and read.per_image == (block, block) and read.images == 2
    assert read.metadata("fake-ocr")["chars"] == 2 * 35


def test_a_slow_engine_times_out_and_the_next_image_gets_a_fresh_worker() -> None:
    """An image over the timeout fails with OcrFailed; a later image is still read."""
    release = threading.Event()
    slow = FakeEngine(INVOICE_LINES, release)
    step = OcrStep(lambda: slow, OcrPolicy(timeout_s=0.2, min_chars=5))
    with pytest.raises(OcrFailed, match=r"timed out after 0.2 s \(image 1\)"):
        step.read_images([Image.new("RGB", (8, 8))])
    release.set()
    assert "1,284.50" in step.read_images([Image.new("RGB", (8, 8))]).text
    step.close()


def test_engine_errors_and_implausible_output_fail_the_file() -> None:
    """An exception inside the engine, an engine that cannot load and an implausible result surface as OcrFailed."""

    class Broken(FakeEngine):
        def read(self, image: Image.Image) -> list[OcrLine]:
            raise RuntimeError("bad pixels")

    with pytest.raises(OcrFailed, match="RuntimeError: bad pixels"):
        OcrStep(lambda: Broken([])).read_images([Image.new("RGB", (8, 8))])

    def unavailable() -> FakeEngine:
        raise ImportError("libGL.so.1: cannot open shared object file")

    with pytest.raises(OcrFailed, match=r"OCR model unavailable: ImportError: libGL\.so\.1"):
        OcrStep(unavailable).read_images([Image.new("RGB", (8, 8))])
    with pytest.raises(OcrFailed, match="too little text"):
        OcrStep(lambda: FakeEngine([_line("ok")])).read_images([Image.new("RGB", (8, 8))])


def test_images_need_the_ocr_step_and_with_it_become_documents(tmp_path: Path) -> None:
    """Without the step an image in a folder is skipped (named: failed); with it the OCR text is the document,
    with the OCR result in its metadata; a corrupt image fails with a reason."""
    Image.new("RGB", (40, 20), "white").save(tmp_path / "scan.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not really")
    by_name = {Path(i.source).name: i for i in read_documents([tmp_path])}
    assert isinstance(by_name["scan.png"], FileError) and by_name["scan.png"].skipped
    assert "pipeline: {ingest: [ocr]}" in by_name["scan.png"].reason
    (named,) = read_documents([tmp_path / "scan.png"])
    assert isinstance(named, FileError) and not named.skipped

    step = OcrStep(lambda: FakeEngine(INVOICE_LINES), OcrPolicy(min_chars=5))
    by_name = {Path(i.source).name: i for i in read_documents([tmp_path], ocr=step)}
    doc, corrupt = by_name["scan.png"], by_name["corrupt.jpg"]
    assert isinstance(doc, RawDocument) and doc.title == "Invoice INV-2026-0417" and "1,284.50" in doc.text
    assert doc.metadata is not None and doc.metadata["format"] == "png"
    assert doc.metadata["ocr"]["model"] == "fake-ocr" and doc.metadata["ocr"]["images"] == 1
    assert isinstance(corrupt, FileError) and not corrupt.skipped and "unreadable image" in corrupt.reason


def test_an_image_only_pdf_page_is_read_by_ocr(tmp_path: Path) -> None:
    """A PDF whose only page is an image has no text layer: without OCR it fails, with OCR its text is used."""
    Image.new("RGB", (60, 30), "white").save(tmp_path / "scan.pdf")
    (failed,) = read_documents([tmp_path / "scan.pdf"])
    assert isinstance(failed, FileError) and "no extractable text" in failed.reason and "ocr" in failed.reason
    step = OcrStep(lambda: FakeEngine(INVOICE_LINES), OcrPolicy(min_chars=5))
    (doc,) = read_documents([tmp_path / "scan.pdf"], ocr=step)
    assert isinstance(doc, RawDocument) and doc.text.endswith("Total due: EUR 1,284.50")
    assert doc.metadata is not None and doc.metadata["ocr"]["pages"] == [1]


def test_a_mixed_pdf_keeps_its_text_pages_when_ocr_of_the_scanned_page_fails(tmp_path: Path) -> None:
    """Text pages come from the text layer; an implausible OCR of the image-only page is recorded, not fatal."""
    from pypdf import PdfWriter

    Image.new("RGB", (60, 30), "white").save(tmp_path / "scan.pdf")
    writer = PdfWriter()
    writer.append(str(FIXTURES / "cheques.pdf"))
    writer.append(str(tmp_path / "scan.pdf"))
    writer.write(tmp_path / "mixed.pdf")
    step = OcrStep(lambda: FakeEngine([_line("logo")]), OcrPolicy(min_chars=5))
    (doc,) = read_documents([tmp_path / "mixed.pdf"], ocr=step)
    assert isinstance(doc, RawDocument) and "cheques expire after six months" in doc.text
    assert doc.metadata is not None and doc.metadata["ocr"]["pages"] == [3]
    assert "too little text" in doc.metadata["ocr"]["error"]


def test_card_pipeline_accepts_known_steps_and_names_unknown_ones(tmp_path: Path) -> None:
    """`pipeline: {ingest: [ocr]}` parses (repeats dropped); an unknown step or stage is a clear card error."""
    card = AgentCard.model_validate({"name": "inv", "description": "d", "pipeline": {"ingest": ["ocr", "ocr"]}})
    assert card.pipeline.ingest == ("ocr",)
    assert AgentCard.model_validate({"name": "x", "description": "d"}).pipeline.ingest == ()
    unknown = r"unknown ingest step\(s\) \['tesseract'\]; known steps: \['entities', 'ocr'\]"
    with pytest.raises(ValidationError, match=unknown):
        AgentCard.model_validate({"name": "x", "description": "d", "pipeline": {"ingest": ["tesseract"]}})
    (tmp_path / "bad.yaml").write_text("name: bad\ndescription: d\npipeline:\n  answer: [ocr]\n")
    with pytest.raises(CardError, match=r"(?s)bad\.yaml.*pipeline\.answer\n  Extra inputs are not permitted"):
        load_cards(tmp_path)


def test_model_users_come_from_the_cards() -> None:
    """The OCR model is used by the agents whose pipeline names `ocr`; the onnx embedder by every agent."""
    cards = {
        "inv": AgentCard.model_validate({"name": "inv", "description": "d", "pipeline": {"ingest": ["ocr"]}}),
        "chat": AgentCard.model_validate({"name": "chat", "description": "d"}),
    }
    used = users(cards, Settings(embedder="onnx", router_registry_name="smolit-router"))
    assert used[OCR_MODEL] == ["inv"] and used["smolit-embedder"] == ["router", "chat", "inv"]
    assert used["smolit-router"] == ["router"]


def test_invoice_ground_truth_total_and_metrics() -> None:
    """Generated invoices add up; the total is found even when OCR drops spaces; CER is edit distance / length."""
    invoice = Invoice("Acme", "INV-1", "2026-01-02", "EUR", (("Paper", 2, 100_000), ("Toner", 1, 7_000)), 20)
    assert invoice.total == "1,284.00" and invoice.lines()[-1] == "Total due: EUR 1,284.00"
    assert extract_total("Acme\nTotaldue:EUR1,284.00") == "1,284.00" and extract_total("no total") is None
    assert extract_total("Totaldue:CHF1.765.15") == "1.765.15" and digits("1.765.15") == digits("1,765.15")
    assert cer("abcd", "abxd") == 0.25 and cer("abc", "abc") == 0.0
    first = [random_invoice(random.Random(3)).number for _ in range(2)]
    assert first[0] == first[1]  # seeded


def test_model_rows_show_the_champions_metrics_and_router_defaults() -> None:
    """A row carries the champion's metrics (not the latest's), aliases, version count, and the router's task tags
    even though the learner registers it untagged."""
    versions = [
        ModelVersion("smolit-router", "1", "r1", ("champion",), {"accuracy": 0.9}, 0),
        ModelVersion("smolit-router", "2", "r2", ("challenger",), {"accuracy": 0.8}, 1),
    ]
    router = RegisteredModel("smolit-router", {}, {"champion": "1", "challenger": "2"}, versions)
    ocr = RegisteredModel("smolit-ocr", {"task_type": "ocr", "domain": "documents"}, {}, [])
    [r, o] = model_rows([router, ocr], {"smolit-router": ["router"], "smolit-ocr": ["inv"]}, "smolit-router")
    assert (r["task_type"], r["latest_version"], r["versions"], r["metrics"]) == ("routing", "2", 2, {"accuracy": 0.9})
    assert r["aliases"] == {"challenger": "2", "champion": "1"} and r["used_by"] == ["router"]
    assert (o["task_type"], o["latest_version"], o["metrics"], o["used_by"]) == ("ocr", None, {}, ["inv"])
