"""Request attachments go through the selector when a card lists several OCR candidates: measured page features plus
the model memory pick the model per attachment, and the choice, scores and outcome are recorded."""

from __future__ import annotations

import base64
import io
import time
import uuid
from typing import Any

import numpy as np
import pytest
from PIL import Image

from smolit.agents import AttachmentReader, ModelManager, OcrPolicy
from smolit.agents.selection import ModelMemory, page_features
from smolit.bench_pipelines import render
from smolit.contracts import AgentCard, Attachment, ModelOutcomeRecorded, TaskAssigned, check_model_hints
from smolit.infra.ocr import OcrLine

from ..invoices import INVOICE

GOOD = "Invoice INV-2026-0417\nTotal due: EUR 1,284.50"


class Registry:
    def __init__(self) -> None:
        self.tags = {n: {"task_type": "ocr"} for n in ("smolit-ocr", "smolit-ocr-fast", "smolit-ocr-upscale")}

    def version_for(self, name: str, alias: str) -> str | None:
        return {"smolit-ocr": "3", "smolit-ocr-fast": "1"}.get(name) if alias == "champion" else None

    def model_tags(self) -> dict[str, dict[str, str]]:
        return self.tags

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return {}


class Engine:
    def __init__(self, text: str, confidence: float = 0.95) -> None:
        self.text, self.confidence = text, confidence

    def read(self, image: Any) -> list[OcrLine]:
        return [OcrLine(self.text, self.confidence, 0, 10, 0)]


def _attachment(name: str, image: Image.Image) -> Attachment:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Attachment(name=name, media_type="image/png", data=base64.b64encode(buffer.getvalue()).decode())


def _reader(fast_text: str, memory: ModelMemory | None = None) -> tuple[AttachmentReader, list[str]]:
    loaded: list[str] = []
    engines = {"smolit-ocr": Engine(GOOD), "smolit-ocr-fast": Engine(fast_text, 0.3)}

    def load(name: str, version: str, tags: Any) -> Engine:
        loaded.append(f"{name}/{version}")
        return engines[name]

    manager = ModelManager(lambda: Registry(), {"ocr": load})
    return AttachmentReader(manager, OcrPolicy(timeout_s=5), memory=memory), loaded


CARD = AgentCard(
    name="invoices",
    description="d",
    domain="invoices",
    pipeline={"request": ["ocr"], "candidates": {"ocr": ["smolit-ocr-fast", "smolit-ocr"]}},  # type: ignore[arg-type]
)
PAGE = render(INVOICE, size=28, noise=0.0, seed=1)


def test_the_selector_picks_per_attachment_by_fit_and_then_by_memory() -> None:
    """An upright page ties on fit and goes to the card's first candidate; its failed reading is remembered, so the
    next upright page goes to the other candidate; an upside-down page goes to the one that reads it (fit)."""
    reader, loaded = _reader("x")  # the fast candidate reads nothing plausible
    upside_down = PAGE.rotate(180)
    assert page_features(np.asarray(upside_down.convert("L"))).orientation == "upside-down"
    request = uuid.uuid4()
    passages, uses, outcomes = reader.read(
        CARD,
        [_attachment("a.png", PAGE), _attachment("b.png", PAGE), _attachment("c.png", upside_down)],
        request,
    )
    assert [(u.name, u.version, u.error is None) for u in uses] == [
        ("smolit-ocr-fast", "1", False),
        ("smolit-ocr", "3", True),
        ("smolit-ocr", "3", True),
    ]
    assert uses[0].scores["smolit-ocr-fast"] == uses[0].scores["smolit-ocr"]  # a tie: the card's order decides
    assert uses[1].scores["smolit-ocr"] > uses[1].scores["smolit-ocr-fast"]
    assert uses[2].scores["smolit-ocr"] > uses[2].scores["smolit-ocr-fast"]
    assert [p.source for p in passages] == ["attachment:b.png", "attachment:c.png"]
    assert [(o.model, o.version, o.selected_by, o.success) for o in outcomes] == [
        ("smolit-ocr-fast", "1", "selector", False),
        ("smolit-ocr", "3", "selector", True),
        ("smolit-ocr", "3", "selector", True),
    ]
    assert outcomes[2].features["orientation"] == "upside-down" and outcomes[0].features["domain"] == "invoices"
    assert loaded == ["smolit-ocr-fast/1", "smolit-ocr/3"]  # each chosen model loaded once and held for the task
    assert reader.memory.outcomes() == 3


def test_outcomes_from_the_topic_steer_the_first_choice() -> None:
    """A memory primed with the fast candidate's failures on such pages sends the first page to the other one."""
    features = {"format": "png", "font": "normal", "orientation": "upright", "contrast": "normal", "domain": "invoices"}
    failures = [
        ModelOutcomeRecorded(correlation_id=uuid.uuid4(), model="smolit-ocr-fast", features=features, success=False)
        for _ in range(3)
    ]
    reader, _ = _reader(GOOD, ModelMemory().apply(failures))
    _, [use], [outcome] = reader.read(CARD, [_attachment("a.png", PAGE)], uuid.uuid4())
    assert (use.name, use.error, outcome.selected_by) == ("smolit-ocr", None, "selector")


def test_one_candidate_keeps_the_managers_resolution() -> None:
    """A card with a single candidate is read by the manager's model for it, without selector scores."""
    card = AgentCard(name="i", description="d", pipeline={"request": ["ocr"], "candidates": {"ocr": ["smolit-ocr"]}})  # type: ignore[arg-type]
    reader, _ = _reader("x")
    _, [use], [outcome] = reader.read(card, [_attachment("a.png", PAGE)], uuid.uuid4())
    assert (use.name, use.version, use.scores, outcome.selected_by) == ("smolit-ocr", "3", {}, "manager")


def test_a_hint_for_a_candidate_is_followed_and_any_other_is_ignored_with_the_reason() -> None:
    """The request's hint overrides the selector when it names one of the card's candidates (even against the
    page's fit); a hint for another model is ignored, the selector decides, and each use says why."""
    reader, _ = _reader(GOOD)
    upside_down = _attachment("c.png", PAGE.rotate(180))
    _, [use], [outcome] = reader.read(CARD, [upside_down], uuid.uuid4(), {"ocr": "smolit-ocr-fast"})
    assert (use.name, use.selected_by, use.scores, use.hint_ignored) == ("smolit-ocr-fast", "hint", {}, None)
    assert outcome.selected_by == "hint"
    _, [use], [outcome] = reader.read(CARD, [upside_down], uuid.uuid4(), {"ocr": "smolit-ocr-upscale"})
    assert (use.name, use.selected_by, outcome.selected_by) == ("smolit-ocr", "selector", "selector")
    assert use.hint_ignored == (
        "hint smolit-ocr-upscale is not an ocr candidate of agent invoices (smolit-ocr-fast, smolit-ocr)"
    )
    plain = AgentCard(name="p", description="d", pipeline={"request": ["ocr"]})  # type: ignore[arg-type]
    _, [use], _ = reader.read(plain, [upside_down], uuid.uuid4(), {"ocr": "smolit-ocr"})  # the default candidate
    assert (use.name, use.selected_by, use.hint_ignored) == ("smolit-ocr", "hint", None)


def test_model_hints_are_checked_against_the_registered_models_and_old_tasks_decode() -> None:
    """An unknown step or model in a hint is a ValueError naming the known ones; tasks from before hints decode."""
    assert check_model_hints({"ocr": "smolit-ocr-faint"}) == {"ocr": "smolit-ocr-faint"}
    with pytest.raises(ValueError, match=r"unknown ocr model 'tesseract' in the hint; known: \['smolit-ocr'"):
        check_model_hints({"ocr": "tesseract"})
    with pytest.raises(ValueError, match="model hint for unknown step 'asr'"):
        check_model_hints({"asr": "whisper"})
    old = TaskAssigned(correlation_id=uuid.uuid4(), agent="a", text="t", conversation_id="c", embedding="")
    payload = old.model_dump(mode="json")
    del payload["model_hints"]
    assert TaskAssigned.model_validate(payload).model_hints == {}


def test_smolit_ask_model_option_needs_step_equals_model() -> None:
    """`smolit ask --model` takes STEP=MODEL and says so before contacting the gateway."""
    from typer.testing import CliRunner

    from smolit.cli import app

    result = CliRunner().invoke(app, ["ask", "total?", "--model", "smolit-ocr", "--url", "http://127.0.0.1:9"])
    assert result.exit_code != 0
    assert "--model takes STEP=MODEL" in str(result.exception) + result.output


class SlowEngine(Engine):
    def __init__(self, seconds: float) -> None:
        super().__init__(GOOD)
        self.seconds = seconds

    def read(self, image: Any) -> list[OcrLine]:
        time.sleep(self.seconds)
        return super().read(image)


def test_a_tasks_and_a_batchs_time_budget_cut_attachment_reading_short_without_blaming_the_model() -> None:
    """With a 1.5 s task budget and 1 s per image, the first attachment is read, the second is cut short by the
    budget and the third is not started; neither counts as the model's failure. A batch budget spans tasks and
    `new_batch` restores it."""
    manager = ModelManager(lambda: Registry(), {"ocr": lambda n, v, t: SlowEngine(1.0)})
    card = AgentCard(name="i", description="d", pipeline={"request": ["ocr"]})  # type: ignore[arg-type]
    pages = [_attachment(f"{n}.png", PAGE) for n in "abc"]
    reader = AttachmentReader(manager, OcrPolicy(timeout_s=5), task_budget_s=1.5)
    passages, uses, outcomes = reader.read(card, pages, uuid.uuid4())
    assert [p.source for p in passages] == ["attachment:a.png"]
    assert uses[0].error is None
    assert "OCR budget of" in (uses[1].error or "") and "spent during image 1" in (uses[1].error or "")
    assert "time budget spent" in (uses[2].error or "")
    assert [o.source for o in outcomes] == ["a.png"]  # budget cuts are not outcomes of the model

    batch = AttachmentReader(manager, OcrPolicy(timeout_s=5), batch_budget_s=1.5)
    assert batch.read(card, pages[:1]).uses[0].error is None
    assert batch.read(card, pages[:1]).uses[0].error is not None  # the second task of the batch: 0.5 s left
    assert "time budget spent" in (batch.read(card, pages[:1]).uses[0].error or "")
    batch.new_batch()
    assert batch.read(card, pages[:1]).uses[0].error is None
