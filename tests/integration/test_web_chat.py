"""The web chat page end to end in headless Chromium (selenium): question, streamed answer, agent, sources and a
thumbs-up that lands as FeedbackGiven on the feedback topic."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolit.contracts import FeedbackGiven, Topic

from ..conftest import read_events
from .chat_stack import ChatStack, running_stack

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,800",
)


@pytest.fixture(scope="module")
def stack(broker: str, pool, embedder) -> Iterator[ChatStack]:
    with running_stack(broker, pool, embedder) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path):
    """Headless Chromium with a fresh profile. A missing or broken browser fails the test: it is not optional."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.fail("chromium and chromedriver are needed for the web chat test: run scripts/install-browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_bin))
    except WebDriverException as exc:
        pytest.fail(f"headless Chromium did not start ({chromium}, {driver_bin}): {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


def _ask(browser, question: str, answers: int):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = browser.find_element(By.ID, "question")
    box.send_keys(question)
    browser.find_element(By.ID, "send").click()
    done = '.message.assistant[data-state="done"]'
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, done)) >= answers)
    return browser.find_elements(By.CSS_SELECTOR, done)[answers - 1]


def test_web_chat_answers_and_sends_feedback(stack: ChatStack, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{stack.url}/")
    assert browser.title == "Smolit chat"
    answer = _ask(browser, "How do I deposit a cheque for my business?", 1)
    assert "cheque" in answer.find_element(By.CLASS_NAME, "answer").text
    assert answer.find_element(By.CLASS_NAME, "agent").get_attribute("textContent") == "finance"
    sources = [li.get_attribute("textContent") for li in answer.find_elements(By.CSS_SELECTOR, ".sources li")]
    assert sources == ["Business cheques — fiqa#cheque"]
    request_id = answer.get_attribute("data-request-id")

    answer.find_element(By.CLASS_NAME, "thumb-up").click()
    status = '.feedback-status[data-state="sent"]'
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, status))
    events = read_events(stack.profile, stack.topics, Topic.FEEDBACK, expect=1)
    assert [(e.correlation_id, e.rating) for e in events if isinstance(e, FeedbackGiven)] == [
        (uuid.UUID(request_id), 1)
    ]

    # A second turn in the same conversation: small talk gets the short reply.
    thanks = _ask(browser, "thanks!", 2)
    assert thanks.find_element(By.CLASS_NAME, "answer").text == "You're welcome! Anything else I can help with?"

    shot = tmp_path / "web-chat.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
    if artifacts := os.environ.get("SMOLIT_ARTIFACTS_DIR"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "web-chat.png")
