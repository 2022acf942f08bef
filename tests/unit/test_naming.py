"""Naming a proposed agent with the LLM: a usable reply renames it, anything else keeps the top terms."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from smolit.infra.llm import Completion, LLMUnavailable
from smolit.learner.discovery import NewDomain
from smolit.learner.naming import LLMNamer, NamingRejected, parse_naming

DOMAIN = NewDomain(
    texts=("How long do I roast a chicken?", "What temperature bakes bread?"),
    centroid=np.zeros(3, dtype=np.float32),
    cohesion=0.4,
    terms=("roast", "bake", "chicken"),
    name="roast-bake",
    description="Questions about roast, bake and chicken, for example: How long do I roast a chicken?",
    examples=("How long do I roast a chicken?", "What temperature bakes bread?"),
    system_prompt="You are Smolit's roast-bake agent. You answer questions about roast, bake and chicken.",
    nearest_agent="general",
    nearest_similarity=0.12,
)


class FakeChat:
    def __init__(self, reply: str | Exception) -> None:
        self.reply = reply
        self.messages: list[dict[str, str]] = []

    def chat(self, messages: Sequence[dict[str, str]], *, max_tokens: int, temperature: float = 0.0) -> Completion:
        self.messages = list(messages)
        if isinstance(self.reply, Exception):
            raise self.reply
        return Completion(self.reply, "openai", "gpt-test", 10, 10, 0.0)


def _reply(**fields: object) -> str:
    return json.dumps(
        {"name": "cooking", "description": "Answers questions about cooking, baking and recipes."} | fields
    )


def test_a_usable_reply_names_and_describes_the_agent_and_records_the_model() -> None:
    chat = FakeChat(_reply(system_prompt="You are a cooking expert. Answer from the passages and cite them."))
    named = LLMNamer(chat)(DOMAIN, {"finance", "legal"})
    assert (named.name, named.named_by) == ("cooking", "llm:gpt-test")
    assert named.description == "Answers questions about cooking, baking and recipes."
    assert named.system_prompt.startswith("You are a cooking expert")
    assert (named.examples, named.centroid is DOMAIN.centroid) == (DOMAIN.examples, True)  # the cluster is kept
    assert "How long do I roast a chicken?" in chat.messages[1]["content"]  # the LLM saw the requests


def test_a_taken_name_gets_a_number_and_a_missing_prompt_is_built_from_the_terms() -> None:
    named = LLMNamer(FakeChat(_reply(name="finance")))(DOMAIN, {"finance", "legal"})
    assert named.name == "finance-2"
    assert named.system_prompt.startswith("You are Smolit's finance-2 agent.")


@pytest.mark.parametrize(
    "reply",
    [
        "Sure! I would call it cooking.",
        _reply(name="Cooking & Baking!"),
        _reply(description="short"),
        json.dumps(["cooking"]),
        LLMUnavailable("APITimeoutError: timed out"),
    ],
)
def test_anything_else_keeps_the_top_terms(reply: str | Exception) -> None:
    assert LLMNamer(FakeChat(reply))(DOMAIN, set()) == DOMAIN


def test_a_fenced_json_reply_is_read() -> None:
    assert parse_naming("```json\n" + _reply() + "\n```")[0] == "cooking"
    with pytest.raises(NamingRejected, match="not JSON"):
        parse_naming("{name: cooking}")


def test_the_setting_picks_the_namer_and_llm_without_an_endpoint_is_one_clear_error() -> None:
    from smolit.errors import SetupError
    from smolit.infra.settings import Settings
    from smolit.services.learner import proposal_namer

    assert proposal_namer(Settings(discovery_naming="auto")) is None  # no endpoint: top terms
    assert proposal_namer(Settings(discovery_naming="terms", openai_base_url="http://127.0.0.1:9/v1")) is None
    assert isinstance(
        proposal_namer(Settings(discovery_naming="auto", openai_base_url="http://127.0.0.1:9/v1")), LLMNamer
    )
    with pytest.raises(SetupError, match="SMOLIT_DISCOVERY_NAMING=llm needs an OpenAI-compatible endpoint"):
        proposal_namer(Settings(discovery_naming="llm"))
