"""OpenAILLM and OpenAIEmbedder against a real OpenAI-compatible HTTP server running in a background thread
(tests/integration/openai_server.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from smolit.contracts.agents import LLMConfig
from smolit.infra.embedder import OpenAIEmbedder
from smolit.infra.llm import LLMError, LLMUnavailable, OpenAILLM, Passage, cost_usd

from .openai_server import running_server

pytestmark = pytest.mark.integration

PASSAGES = [
    Passage("Cheques are cleared within two business days.", "bank/cheques.md", "Cheques", 0.81),
    Passage("Wire transfers abroad cost 15 EUR.", "bank/fees.md", None, 0.55),
]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Base URL of the running fake server and the list of request bodies it has received."""
    with running_server() as running:
        yield running


def _llm(base_url: str, timeout_s: float = 5.0) -> OpenAILLM:
    return OpenAILLM(base_url, None, "default-model", timeout_s=timeout_s, max_retries=0)


def test_each_llm_config_shapes_its_own_request(server: tuple[str, list[dict[str, Any]]]) -> None:
    """Two agent configs send their own system prompt, temperature, model and max_tokens with the numbered passages."""
    base_url, received = server
    llm = _llm(base_url)
    bank = LLMConfig(model="bank-model", temperature=0.1, max_tokens=50, system_prompt="You are a banking expert.")
    nurse = LLMConfig(temperature=0.9, max_tokens=80, system_prompt="You are a triage nurse.")

    first = llm.complete("When do cheques clear?", PASSAGES, bank)
    second = llm.complete("When do cheques clear?", PASSAGES, nurse)

    a, b = received[-2:]
    assert (a["model"], a["temperature"], a["max_tokens"]) == ("bank-model", 0.1, 50)
    assert (b["model"], b["temperature"], b["max_tokens"]) == ("default-model", 0.9, 80)
    assert a["messages"][0] == {"role": "system", "content": "You are a banking expert."}
    assert b["messages"][0] == {"role": "system", "content": "You are a triage nurse."}
    assert a["messages"][1] == b["messages"][1]
    user = a["messages"][1]["content"]
    assert "[1] (source: bank/cheques.md, title: Cheques)" in user and "[2] (source: bank/fees.md)" in user
    assert user.rstrip().endswith("Question: When do cheques clear?")
    assert "banking expert" in first.text and "triage nurse" in second.text
    assert (first.backend, first.model, second.model) == ("openai", "bank-model", "default-model")


def test_usage_tokens_and_cost_are_reported(server: tuple[str, list[dict[str, Any]]]) -> None:
    """Token counts come from the response's usage; a priced model gets a cost, an unknown one costs nothing."""
    base_url, received = server
    llm = _llm(base_url)
    priced = llm.complete("When do cheques clear?", PASSAGES, LLMConfig(model="gpt-4o-mini"))
    sent = received[-1]["messages"]
    assert priced.prompt_tokens == sum(len(m["content"].split()) for m in sent)
    assert priced.completion_tokens == len(priced.text.split()) > 0
    assert priced.cost_usd == pytest.approx((priced.prompt_tokens * 0.15 + priced.completion_tokens * 0.60) / 1e6)
    assert priced.cost_usd == cost_usd("gpt-4o-mini-2024-07-18", priced.prompt_tokens, priced.completion_tokens)
    assert llm.complete("When do cheques clear?", PASSAGES, LLMConfig()).cost_usd == 0.0


def test_stream_yields_deltas_and_returns_the_completion(server: tuple[str, list[dict[str, Any]]]) -> None:
    """Streaming yields the answer piece by piece, asks for usage, and returns the same Completion as complete()."""
    base_url, received = server
    llm = _llm(base_url)
    config = LLMConfig(system_prompt="You are a banking expert.")
    deltas: list[str] = []
    stream = llm.stream("When do cheques clear?", PASSAGES, config)
    while True:
        try:
            deltas.append(next(stream))
        except StopIteration as done:
            completion = done.value
            break
    assert received[-1]["stream"] is True and received[-1]["stream_options"] == {"include_usage": True}
    assert len(deltas) > 1
    assert completion == llm.complete("When do cheques clear?", PASSAGES, config)
    assert "".join(deltas) == completion.text and completion.completion_tokens == len(deltas)


def test_server_slower_than_the_timeout_is_unavailable(server: tuple[str, list[dict[str, Any]]]) -> None:
    """A server that answers after the timeout raises the retryable LLMUnavailable, promptly."""
    base_url, _ = server
    llm = _llm(base_url, timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(LLMUnavailable) as raised:
        llm.complete("When do cheques clear?", PASSAGES, LLMConfig(model="sleep:1.5"))
    assert time.monotonic() - start < 1.2
    assert raised.value.retryable and isinstance(raised.value.__cause__, openai.APITimeoutError)
    with pytest.raises(LLMUnavailable):
        list(llm.stream("When do cheques clear?", PASSAGES, LLMConfig(model="sleep:1.5")))


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (429, True), (400, False), (401, False)])
def test_http_errors_map_to_retryable_or_not(
    server: tuple[str, list[dict[str, Any]]], status: int, retryable: bool
) -> None:
    """Overload and server errors are LLMUnavailable (retryable); request and auth errors are plain LLMError."""
    base_url, _ = server
    with pytest.raises(LLMError) as raised:
        _llm(base_url).complete("q", PASSAGES, LLMConfig(model=f"status:{status}"))
    assert isinstance(raised.value, LLMUnavailable) is retryable
    assert raised.value.retryable is retryable


def test_openai_embedder_requests_384_dimensions_and_normalises(server: tuple[str, list[dict[str, Any]]]) -> None:
    """The API embedder asks for 384 dimensions and returns unit rows in input order, even from a sloppy server."""
    base_url, received = server
    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0)
    embedder = OpenAIEmbedder(client, "text-embedding-3-small")
    vectors = embedder.embed(["alpha", "beta", "gamma"])
    assert received[-1]["dimensions"] == 384 and received[-1]["input"] == ["alpha", "beta", "gamma"]
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = np.random.default_rng(3).standard_normal((3, 384))  # the server's rows, in index order
    assert np.allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
