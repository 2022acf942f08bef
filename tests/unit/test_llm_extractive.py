"""The offline extractive LLM and the chat prompt every generative backend receives."""

from __future__ import annotations

import re

from smolit.contracts.agents import LLMConfig
from smolit.infra.llm import LLM, NO_DOCUMENTS, ExtractiveLLM, Passage, build_llms, build_prompt
from smolit.infra.settings import Settings

FINANCE = Passage(
    "Apple reported net revenue of 90 billion dollars in the third quarter. "
    "The board also raised the quarterly dividend by four percent. Shares rose after the call.",
    "finance/apple.md",
    "Apple Q3",
    0.82,
)
MEDICAL = Passage(
    "Aspirin reduces fever and mild pain.\n\nRevenue growth in the pharmacy sector slowed in the third quarter.",
    "health/aspirin.md",
    None,
    0.41,
)
LLM_ = ExtractiveLLM()


def _citations(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\[(\d+)\]", text)]


def test_answer_quotes_and_cites_the_passage_that_answers() -> None:
    """The sentence sharing most words with the question is quoted and cited with its passage number."""
    answer = LLM_.complete("What was Apple's revenue in the third quarter?", [FINANCE, MEDICAL], LLMConfig())
    assert answer.text == "Apple reported net revenue of 90 billion dollars in the third quarter. [1]"
    reversed_order = LLM_.complete("What was Apple's revenue in the third quarter?", [MEDICAL, FINANCE], LLMConfig())
    assert _citations(reversed_order.text) == [2]


def test_citation_numbers_follow_the_passage_order() -> None:
    """A question covering two passages cites each with its own number, in reading order."""
    answer = LLM_.complete("Does aspirin reduce fever, and was the dividend raised?", [FINANCE, MEDICAL], LLMConfig())
    assert answer.text == (
        "The board also raised the quarterly dividend by four percent. [1] Aspirin reduces fever and mild pain. [2]"
    )


def test_inflected_words_still_match() -> None:
    """Simple stemming lets 'raising dividends' find 'raised the quarterly dividend'."""
    answer = LLM_.complete("Are they raising dividends?", [MEDICAL, FINANCE], LLMConfig())
    assert answer.text == "The board also raised the quarterly dividend by four percent. [2]"


def test_no_shared_words_quotes_the_best_passage_opening() -> None:
    """When nothing matches lexically the top passage's first sentence is quoted rather than nothing."""
    answer = LLM_.complete("zebra?", [FINANCE, MEDICAL], LLMConfig())
    assert answer.text == "Apple reported net revenue of 90 billion dollars in the third quarter. [1]"


def test_answers_are_deterministic() -> None:
    """The same question and passages always give the same completion."""
    runs = {LLM_.complete("third quarter revenue and dividend", [FINANCE, MEDICAL], LLMConfig()) for _ in range(5)}
    assert len(runs) == 1


def test_max_tokens_caps_the_answer() -> None:
    """The answer, citation markers included, never has more words than max_tokens."""
    question = "Does aspirin reduce fever, and was Apple's third quarter revenue or dividend raised?"
    full = LLM_.complete(question, [FINANCE, MEDICAL], LLMConfig())
    assert full.completion_tokens > 12
    for limit in (1, 2, 5, 12, 20):
        answer = LLM_.complete(question, [FINANCE, MEDICAL], LLMConfig(max_tokens=limit))
        assert 0 < answer.completion_tokens <= limit
        assert answer.completion_tokens == len(answer.text.split())
    assert (
        LLM_.complete(question, [FINANCE, MEDICAL], LLMConfig(max_tokens=5)).text == "Apple reported net revenue… [1]"
    )


def test_no_passages_says_so() -> None:
    """Without passages the answer says there are no documents, costs nothing and cites nothing."""
    answer = LLM_.complete("What is the capital of Peru?", [], LLMConfig())
    assert answer.text == NO_DOCUMENTS and "no documents" in answer.text
    assert (answer.backend, answer.model, answer.cost_usd) == ("extractive", None, 0.0)
    assert _citations(answer.text) == []


def test_token_counts_are_word_counts() -> None:
    """Prompt tokens count the question and passage words; completion tokens count the answer words."""
    answer = LLM_.complete("Apple revenue?", [FINANCE], LLMConfig())
    assert answer.prompt_tokens == 2 + len(FINANCE.text.split())
    assert answer.completion_tokens == len(answer.text.split())


def test_stream_returns_the_completion() -> None:
    """Streaming the extractive answer yields its text once and returns the same Completion."""
    config = LLMConfig()

    def consume() -> object:
        return (yield from LLM_.stream("Apple revenue?", [FINANCE], config))

    gen = consume()
    assert next(gen) == LLM_.complete("Apple revenue?", [FINANCE], config).text
    try:
        next(gen)
    except StopIteration as done:
        assert done.value == LLM_.complete("Apple revenue?", [FINANCE], config)


def test_prompt_carries_system_prompt_numbered_passages_and_question() -> None:
    """build_prompt puts the agent's system prompt first, then passages [1]..[n] with sources, then the question."""
    config = LLMConfig(system_prompt="You are a cautious financial analyst.")
    system, user = build_prompt("What was Apple's revenue?", [FINANCE, MEDICAL], config)
    assert system == {"role": "system", "content": "You are a cautious financial analyst."}
    assert user["role"] == "user"
    text = user["content"]
    assert "[1] (source: finance/apple.md, title: Apple Q3)\nApple reported net revenue" in text
    assert "[2] (source: health/aspirin.md)\nAspirin reduces fever" in text
    assert text.index("[1]") < text.index("[2]") < text.index("Question: What was Apple's revenue?")
    assert "(no passages were found)" in build_prompt("q", [], config)[1]["content"]


def test_build_llms_offers_openai_only_when_configured() -> None:
    """Only the extractive backend exists by default; an endpoint or key adds the OpenAI one."""
    assert list(build_llms(Settings())) == ["extractive"]
    llms = build_llms(Settings(openai_base_url="http://127.0.0.1:9/v1"))
    assert sorted(llms) == ["extractive", "openai"]
    assert all(isinstance(llm, LLM) for llm in llms.values())
    assert sorted(build_llms(Settings(openai_api_key="sk-test"))) == ["extractive", "openai"]
