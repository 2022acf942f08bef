"""A/B test logic: stable hash assignment, the test fold, the outcome join and the z-test decision."""

from __future__ import annotations

import uuid

from smolit.ab_cli import BETTER, TOO_FEW, UNDECIDED, WORSE, compare, outcomes
from smolit.contracts import (
    CONTROL,
    TREATMENT,
    Experiments,
    ExperimentStarted,
    ExperimentStopped,
    RoutingDecided,
    TrainingExample,
    arm,
)


def test_assignment_is_stable_and_matches_the_share() -> None:
    """A conversation keeps its arm; about `share` of 20,000 conversations land in treatment."""
    ids = [f"conv-{i}" for i in range(20_000)]
    first = [arm(c, "ab-1", 0.2) for c in ids]
    assert first == [arm(c, "ab-1", 0.2) for c in ids]
    share = first.count(TREATMENT) / len(ids)
    assert 0.19 < share < 0.21, share
    assert set(first) == {CONTROL, TREATMENT}
    other = [arm(c, "ab-2", 0.2) for c in ids]
    assert other != first, "a new test must reshuffle conversations"


def test_running_test_follows_start_and_stop() -> None:
    """The last started test that was not stopped is the running one."""
    started = ExperimentStarted(correlation_id=uuid.uuid4(), experiment_id="ab-1", router_version="3", share=0.5)
    state = Experiments.of([started])
    assert state.running == started
    state.apply([ExperimentStopped(correlation_id=uuid.uuid4(), experiment_id="ab-1", decision=UNDECIDED)])
    assert state.running is None


def test_decision_needs_samples_and_significance() -> None:
    """Too few judged outcomes decide nothing; a clear difference decides its direction; a small one does not."""
    assert compare((5, 10), (10, 10), 0.05, 30)["decision"] == TOO_FEW
    better = compare((40, 100), (70, 100), 0.05, 30)
    assert better["decision"] == BETTER and better["p_value"] < 0.001
    assert better["control_rate"] == 0.4 and better["treatment_judged"] == 100
    assert compare((70, 100), (40, 100), 0.05, 30)["decision"] == WORSE
    assert compare((50, 100), (53, 100), 0.05, 30)["decision"] == UNDECIDED


def test_outcomes_join_decisions_of_the_test_with_judged_examples() -> None:
    """Only this test's decisions count, each request once, neutral examples are not judged."""
    ids = [uuid.uuid4() for _ in range(4)]

    def decided(i: int, exp: str, which: str) -> RoutingDecided:
        return RoutingDecided(
            correlation_id=ids[i], agent="a", scores={}, score=1, model_version="v", latency_ms=1, embedding="",
            experiment_id=exp, arm=which,
        )  # fmt: skip

    def example(i: int, positive: bool | None) -> TrainingExample:
        return TrainingExample(correlation_id=ids[i], text="t", embedding="", agent="a", scores={}, positive=positive)

    decisions = [decided(0, "ab-1", CONTROL), decided(1, "ab-1", TREATMENT), decided(2, "ab-1", TREATMENT)]
    decisions.append(decided(3, "ab-0", TREATMENT))
    examples = [example(0, False), example(1, True), example(1, False), example(2, None), example(3, True)]
    assert outcomes("ab-1", decisions, examples) == {CONTROL: (0, 1), TREATMENT: (1, 1)}
