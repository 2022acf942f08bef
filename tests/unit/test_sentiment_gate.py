"""The sentiment model's own-feedback examples and its promotion gate (pure logic)."""

from __future__ import annotations

import uuid

import pytest

from smolit.contracts import FeedbackGiven, ModelUse, RolledBack
from smolit.sentiment import feedback_examples, gate


def _feedback(rating: int, comment: str | None, scale: str | None = None, inferred: bool = False) -> FeedbackGiven:
    return FeedbackGiven(
        correlation_id=uuid.uuid4(),
        producer="gateway",
        rating=rating,
        scale=scale,  # type: ignore[arg-type]
        comment=comment,
        inferred_by=ModelUse(step="sentiment", name="smolit-sentiment", version="1") if inferred else None,
    )


def test_feedback_examples_take_user_rated_comments_once_and_label_them_by_the_normalised_rating() -> None:
    up, down = _feedback(1, " Spot on, thanks. ", "thumbs"), _feedback(-1, "Wrong amount.", "thumbs")
    five, two, three = _feedback(5, "Excellent.", "stars"), _feedback(2, "Meh, vague.", "stars"), _feedback(3, "Ok.")
    one_star = _feedback(1, "Useless.", "stars")  # a rating of 1 on the star scale is negative
    events = [
        up,
        down,
        up,  # redelivered: same event id
        five,
        two,
        three,
        one_star,
        _feedback(1, None, "thumbs"),
        _feedback(-1, "   ", "thumbs"),
        _feedback(-1, "Guessed by the model.", "thumbs", inferred=True),
        RolledBack(
            correlation_id=uuid.uuid4(), producer="cli", registry_name="x", version="1", from_version="2", reason=""
        ),
    ]
    data = feedback_examples(reversed(events))  # read order does not matter: event time does
    assert sorted(data.examples) == [
        ("Excellent.", 1),
        ("Meh, vague.", 0),
        ("Spot on, thanks.", 1),
        ("Useless.", 0),
        ("Wrong amount.", 0),
    ]
    assert feedback_examples(events).examples == data.examples
    assert data.as_dict() == {"used": 5, "without_comment": 2, "inferred": 1, "neutral": 1, "duplicates": 1}


@pytest.mark.parametrize(
    ("candidate", "champion", "holdout", "promote", "reason"),
    [
        (0.70, None, 10, True, "no champion yet"),
        (0.95, 0.70, 29, False, "holdout 29 < 30"),
        (0.80, 0.80, 60, False, "macro F1 0.8000 < champion 0.8000 + margin 0.01"),
        (0.805, 0.80, 60, False, "macro F1 0.8050 < champion 0.8000 + margin 0.01"),
        (0.82, 0.80, 60, True, "macro F1 0.8200 >= champion 0.8000 + margin 0.01"),
        (0.60, 0.80, 60, False, "macro F1 0.6000 < champion 0.8000 + margin 0.01"),
    ],
)
def test_gate_promotes_only_a_candidate_that_beats_the_champion_by_the_margin_on_enough_texts(
    candidate: float, champion: float | None, holdout: int, promote: bool, reason: str
) -> None:
    decision = gate(candidate, champion, holdout, margin=0.01, min_holdout=30)
    assert (decision.promote, decision.reason) == (promote, reason)


def test_the_router_ignores_rollbacks_of_other_models_but_follows_its_own() -> None:
    from types import SimpleNamespace

    from smolit.router.service import ModelWatcher

    loads: list[int] = []

    def load_champion() -> None:
        loads.append(1)

    router = SimpleNamespace(network=None)
    watcher = ModelWatcher(router, load_champion, registry_name="smolit-router")  # type: ignore[arg-type]

    def rolled_back(name: str) -> RolledBack:
        return RolledBack(
            correlation_id=uuid.uuid4(), producer="cli", registry_name=name, version="1", from_version="2", reason=""
        )

    watcher.handle([rolled_back("smolit-sentiment")])
    assert loads == []
    watcher.handle([rolled_back("smolit-router")])
    assert loads == [1]


def test_the_evaluation_split_is_the_same_for_every_training_seed() -> None:
    """Whatever the seed, the held-out texts are those seed 42 holds out, no seed trains on them, and every other
    text trains (for seed 42 exactly the split before the fix)."""
    import numpy as np

    from smolit.infra.sentiment import split
    from smolit.sentiment import fixed_split

    base_train, base_eval = split(200, 42)
    for seed in (42, 7, 1234):
        train, evaluation = fixed_split(200, seed)
        assert np.array_equal(evaluation, base_eval)
        assert not set(train.tolist()) & set(evaluation.tolist())
    assert np.array_equal(fixed_split(200, 42)[0], base_train)
    assert sorted(fixed_split(200, 7)[0].tolist()) == sorted(base_train.tolist())
