"""Card variants: an A/B variant file's overrides validated against the card model, and which card answers a
conversation while a learner challenger or an agent test is on trial."""

from __future__ import annotations

import json
import uuid

import pytest

from smolit.agents import Trials
from smolit.contracts import (
    CONTROL,
    TREATMENT,
    AgentCard,
    AgentCreated,
    AgentRetired,
    AgentUpdated,
    AnswerProduced,
    ExperimentStarted,
    ExperimentStopped,
    Lifecycle,
    apply_variant,
    arm,
    challenger_trial,
)

CARD = AgentCard(name="legal", description="contracts and privacy")


def test_a_variant_overrides_only_how_the_agent_answers() -> None:
    """Prompt, temperature, tokens, model, backend and top-k may change; the result is a valid card like the agent's."""
    variant = apply_variant(
        CARD,
        {"llm": {"system_prompt": "Answer as a pirate.", "temperature": 0.9, "max_tokens": 50, "model": "m"},
         "retrieval": {"top_k": 9}},
    )  # fmt: skip
    assert (variant.llm.system_prompt, variant.llm.temperature) == ("Answer as a pirate.", 0.9)
    assert (variant.llm.max_tokens, variant.llm.model) == (50, "m")
    assert (variant.retrieval.top_k, variant.retrieval.min_score) == (9, CARD.retrieval.min_score)
    assert (variant.name, variant.description, variant.version) == (CARD.name, CARD.description, CARD.version)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ("just text", "a mapping"),
        ({}, "a mapping"),
        ({"description": "x"}, "may only override llm, retrieval; not 'description'"),
        ({"llm": "x"}, "`llm` must be a mapping"),
        ({"llm": {"prompt": "x"}}, "unknown llm settings: prompt"),
        ({"llm": {"temperature": 5}}, "temperature"),
        ({"retrieval": {"top_k": 0}}, "top_k"),
        ({"llm": {"backend": "gpt"}}, "backend"),
        ({"llm": {"temperature": CARD.llm.temperature}}, "changes nothing"),
    ],
)
def test_a_bad_variant_is_refused_with_the_reason(overrides: object, words: str) -> None:
    """Not a mapping, a field outside llm/retrieval, an unknown or invalid setting, or no change: ValueError."""
    with pytest.raises(ValueError, match=words.replace("(", r"\(")) as caught:
        apply_variant(CARD, overrides)
    assert words in str(caught.value)


def _challenger(version: int, share: float | None) -> AgentUpdated:
    card = CARD.model_copy(update={"version": version, "retrieval": CARD.retrieval.model_copy(update={"top_k": 8})})
    return AgentUpdated(correlation_id=uuid.uuid4(), card=card, share=share)


def test_a_challenger_answers_its_hash_share_until_a_card_replaces_it() -> None:
    """A challenger with share 0.3 answers the conversations whose hash falls in its arm (about 30 %), the champion the
    rest, each choice naming the trial and arm; promotion (no share) or retirement ends the trial."""
    trials = Trials()
    update = _challenger(2, 0.3)
    trials.apply([update])
    trial_id = challenger_trial("legal", 2)
    choices = {f"c{i}": trials.choose(CARD, f"c{i}") for i in range(2000)}
    for conversation, choice in choices.items():
        expected = arm(conversation, trial_id, 0.3)
        assert (choice.experiment_id, choice.arm) == (trial_id, expected)
        assert choice.card == (update.card if expected == TREATMENT else CARD)
    share = sum(c.arm == TREATMENT for c in choices.values()) / len(choices)
    assert 0.27 < share < 0.33
    assert trials.choose(CARD, None).arm is None  # subqueries: the champion
    assert trials.choose(AgentCard(name="finance", description="f"), "c1").experiment_id is None

    trials.apply([_challenger(2, None)])
    assert trials.choose(CARD, "c1").experiment_id is None
    trials.apply([_challenger(3, 0.5), AgentRetired(correlation_id=uuid.uuid4(), agent="legal", reason="x")])
    assert trials.active == {}
    trials.apply([_challenger(4, 0.5), AgentCreated(correlation_id=uuid.uuid4(), card=CARD)])
    assert trials.active == {}


def test_an_agent_test_takes_precedence_while_it_runs() -> None:
    """An agent A/B test's variant answers its treatment arm instead of a running challenger; after the stop the
    challenger is back; a router test changes nothing here."""
    trials = Trials()
    variant = apply_variant(CARD, {"llm": {"system_prompt": "Be brief."}})
    started = ExperimentStarted(
        correlation_id=uuid.uuid4(), experiment_id="ab-a", kind="agent", agent="legal", variant=variant, share=0.5
    )
    router_test = ExperimentStarted(correlation_id=uuid.uuid4(), experiment_id="ab-r", router_version="1", share=0.5)
    trials.apply([_challenger(2, 0.5), router_test])
    assert trials.active["legal"].experiment_id == challenger_trial("legal", 2)
    trials.apply([ExperimentStopped(correlation_id=uuid.uuid4(), experiment_id="ab-r", decision="x"), started])
    assert trials.active["legal"].experiment_id == "ab-a"
    arms = {trials.choose(CARD, f"c{i}").arm for i in range(50)}
    assert arms == {CONTROL, TREATMENT}
    treated = next(f"c{i}" for i in range(50) if arm(f"c{i}", "ab-a", 0.5) == TREATMENT)
    assert trials.choose(CARD, treated).card.llm.system_prompt == "Be brief."
    trials.apply([ExperimentStopped(correlation_id=uuid.uuid4(), experiment_id="ab-a", decision="too few")])
    assert trials.active["legal"].experiment_id == challenger_trial("legal", 2)


def test_the_lifecycle_fold_tracks_challengers() -> None:
    """`cards` holds the newest card (the challenger being judged), `champions` the card answering outside trials,
    `challengers` the sharing updates until a card replaces them."""
    state = Lifecycle.of([AgentCreated(correlation_id=uuid.uuid4(), card=CARD), _challenger(2, 0.5)])
    assert state.cards["legal"].version == 2 and "legal" in state.challengers
    assert state.champions["legal"] == CARD  # what an agent test's variant is built on
    state.apply(_challenger(2, None))
    assert state.challengers == {} and state.champions["legal"].version == 2


def test_old_payloads_decode_with_the_new_fields_defaulted() -> None:
    """AgentUpdated without share replaces the card; AnswerProduced without version/arm; router tests as before."""
    from smolit.contracts import decode, encode

    update = AgentUpdated(correlation_id=uuid.uuid4(), card=CARD)
    raw = update.model_dump(mode="json")
    raw.pop("share")
    assert AgentUpdated.model_validate(raw).share is None
    started = ExperimentStarted(correlation_id=uuid.uuid4(), experiment_id="x", router_version="3", share=0.2)
    assert decode(encode(started)[0]) == started
    old_answer = {"type": "AnswerProduced", "correlation_id": str(uuid.uuid4()), "agent": "legal", "answer": "a",
                  "backend": "extractive", "latency_ms": 1.0}  # fmt: skip
    answer = decode(json.dumps(old_answer).encode())
    assert isinstance(answer, AnswerProduced) and (answer.card_version, answer.experiment_id, answer.arm) == (None,) * 3
