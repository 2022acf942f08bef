"""The sentiment model through the real path: `smolit models train-sentiment` fits and registers it in a real MLflow
sqlite registry; the gateway service (`run_gateway` with its real wiring on the embedded broker and PostgreSQL)
infers the rating of comment-only feedback with `smolit-sentiment@champion`, records the model version on
`FeedbackGiven`, refuses comments it is unsure about, and follows `smolit models promote` without a restart."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from smolit.cli import app
from smolit.contracts import FeedbackGiven, ModelUse, RolledBack, Topic, TopicNames
from smolit.infra.embedded import free_port
from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing
from smolit.infra.registry import CHAMPION, open_registry
from smolit.services.gateway import run_gateway

from ..conftest import read_events
from .service_thread import service_settings, service_thread

pytestmark = pytest.mark.integration

NEGATIVE = "Terrible answer, completely wrong and useless."
POSITIVE = "Wonderful, clear and accurate. I loved it."


@pytest.fixture
def env(tmp_path: Path, broker: str, database_url: str, topics: TopicNames) -> dict[str, str]:
    return {
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu",
        "SMOLIT_TOPIC_PREFIX": topics.prefix,
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_DATA_DIR": str(tmp_path / "data"),
        "SMOLIT_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow/mlflow.db",
        "SMOLIT_THREADS": "1",
    }


def _cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def _json(output: str) -> dict[str, Any]:
    """The JSON object the command printed (log lines of other threads may surround it in captured output)."""
    found, _ = json.JSONDecoder().raw_decode(output[output.index("{\n") :])
    return dict(found)


@contextmanager
def _gateway_service(env: dict[str, str]) -> Iterator[str]:
    """`smolit run gateway` in a thread (real wiring, consumer loops, uvicorn); yields its URL."""
    settings = service_settings(
        env,
        port=free_port(),
        request_timeout_s=0.3,  # no router runs: requests answer 504 and stay recorded, ready for feedback
        sentiment_timeout_s=60,  # the first inference opens MLflow and loads the embedder on a shared machine
    )
    url = f"http://127.0.0.1:{settings.port}"
    with service_thread(settings, "gateway", run_gateway) as errors:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not errors:
            try:
                if httpx.get(f"{url}/metrics", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert not errors, errors
        yield url


def _request(url: str) -> str:
    response = httpx.post(f"{url}/v1/requests", json={"text": "How are dividends taxed?"}, timeout=10)
    assert response.status_code == 504, response.text
    return str(response.json()["request_id"])


def test_comment_only_feedback_is_rated_by_the_trained_champion_and_follows_a_promotion(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames
) -> None:
    """Training registers version 1 with its metrics as champion; a clearly negative comment alone becomes a
    thumbs-down inferred by v1; a vague one is refused; after `promote smolit-sentiment 2` the running gateway
    infers with v2."""
    trained = _cli(env, "models", "train-sentiment", "--json")
    assert trained.exit_code == 0, trained.output
    first = _json(trained.output)
    assert (first["name"], first["version"], first["champion"], first["seed"]) == ("smolit-sentiment", "1", "1", 42)
    assert first["metrics"]["accuracy"] >= 0.7 and first["metrics"]["holdout_size"] == 60
    registry = open_registry(env["SMOLIT_MLFLOW_TRACKING_URI"], Path(env["SMOLIT_DATA_DIR"]), "smolit-models")
    model = next(m for m in registry.models() if m.name == "smolit-sentiment")
    assert (model.tags["task_type"], model.tags["domain"]) == ("sentiment", "feedback")
    assert "MiniLM" in model.tags["input_format"] and model.aliases == {CHAMPION: "1", "challenger": "1"}
    assert model.versions[0].metrics["accuracy"] == pytest.approx(first["metrics"]["accuracy"], abs=1e-4)
    assert {"macro_f1", "log_loss", "ece", "comment_inference_p50_ms"} <= set(model.versions[0].metrics)

    with _gateway_service(env) as url:
        request_id = _request(url)
        negative = httpx.post(
            f"{url}/v1/feedback", json={"request_id": request_id, "comment": NEGATIVE, "user": "ann"}, timeout=90
        )
        assert negative.status_code == 201, negative.text
        body = negative.json()
        assert (body["rating"], body["sentiment"]) == (-1, "negative")
        assert (body["inferred"]["model"], body["inferred"]["version"]) == ("smolit-sentiment", "1")
        assert body["inferred"]["confidence"] >= 0.7

        vague = httpx.post(f"{url}/v1/feedback", json={"request_id": request_id, "comment": "ok", "user": "bob"})
        assert vague.status_code == 422 and "SMOLIT_SENTIMENT_MIN_CONFIDENCE" in vague.json()["detail"]
        empty = httpx.post(f"{url}/v1/feedback", json={"request_id": request_id, "user": "bob"})
        assert empty.status_code == 422

        cli = _cli(env, "feedback", request_id, "--comment", POSITIVE, "--user", "carl", "--url", url)
        assert cli.exit_code == 0, cli.output
        assert "positive feedback" in cli.output and "inferred from the comment by smolit-sentiment v1" in cli.output

        again = _cli(env, "models", "train-sentiment", "--seed", "7", "--json")
        assert again.exit_code == 0, again.output
        assert (_json(again.output)["version"], _json(again.output)["champion"]) == ("2", "1")
        promoted = _cli(env, "models", "promote", "smolit-sentiment", "2")
        assert promoted.exit_code == 0, promoted.output

        swapped, dora_posts = None, 0
        deadline = time.monotonic() + 30
        while swapped is None and time.monotonic() < deadline:
            response = httpx.post(
                f"{url}/v1/feedback",
                json={"request_id": _request(url), "comment": NEGATIVE, "user": "dora"},
                timeout=30,
            )
            assert response.status_code == 201, response.text
            dora_posts += 1
            if response.json()["inferred"]["version"] == "2":
                swapped = response.json()
        assert swapped is not None, "the gateway kept inferring with version 1 after the promotion"
        assert swapped["rating"] == -1

    events = [
        e for e in read_events(profile, topics, Topic.FEEDBACK, expect=2 + dora_posts) if isinstance(e, FeedbackGiven)
    ]
    ann = next(e for e in events if e.user == "ann")
    assert (ann.rating, ann.scale, ann.comment) == (-1, "thumbs", NEGATIVE)
    assert ann.inferred_by is not None and (ann.inferred_by.name, ann.inferred_by.version) == ("smolit-sentiment", "1")
    assert ann.inferred_by.step == "sentiment" and ann.inferred_confidence is not None
    assert next(e for e in events if e.user == "carl").rating == 1
    dora = [e for e in events if e.user == "dora"]
    assert dora[-1].inferred_by is not None and dora[-1].inferred_by.version == "2"
    assert not any(e.user == "bob" for e in events)
    carl = next(e for e in events if e.user == "carl")
    assert carl.inferred_by is not None
    # Not a timed assertion: the numbers README quotes (`pytest ... -s`).
    print(f"\nfirst_inference_s={ann.inferred_by.seconds:.3f} warm_inference_s={carl.inferred_by.seconds:.4f}")


ITEMS = (
    "the invoice total",
    "the contract clause",
    "the dividend tax rate",
    "the VAT amount",
    "the notice period",
    "the due date",
    "the interest rate",
    "the refund policy",
    "the shipping fee",
    "the deductible",
    "the pension age",
    "the late fee",
    "the discount",
    "the warranty term",
    "the exchange rate",
)
"""Domain feedback the movie-review model cannot read (it rates both kinds negative): whether the answer came from
the customer's own documents is what Smolit's users praise or blame."""
OWN_POSITIVE = ("It quoted {x} straight from our document, with the source.", "It found {x} in the knowledge base.")
OWN_NEGATIVE = ("It quoted {x} from a different customer's document.", "It made up {x} instead of looking it up.")


def _own_feedback() -> list[FeedbackGiven]:
    def given(comment: str, rating: int, **extra: Any) -> FeedbackGiven:
        return FeedbackGiven(
            correlation_id=uuid.uuid4(), producer="gateway", rating=rating, scale="thumbs", comment=comment, **extra
        )

    rated = [given(t.format(x=x), 1) for x in ITEMS for t in OWN_POSITIVE]
    rated += [given(t.format(x=x), -1) for x in ITEMS for t in OWN_NEGATIVE]
    inferred = ModelUse(step="sentiment", name="smolit-sentiment", version="1")
    return [
        *rated,
        rated[0],  # redelivered: the same event id counts once
        given("It made up the figure.", 1, inferred_by=inferred),  # the model's own guess is no label
        given("", 1),
    ]


def _until_version(url: str, version: str, user: str) -> dict[str, Any]:
    """Comment-only feedback until the running gateway infers with `version` (it swaps when it reads the event)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = httpx.post(
            f"{url}/v1/feedback", json={"request_id": _request(url), "comment": NEGATIVE, "user": user}, timeout=30
        )
        assert response.status_code == 201, response.text
        if response.json()["inferred"]["version"] == version:
            return dict(response.json())
    raise AssertionError(f"the gateway never inferred with version {version}")


def test_own_feedback_retrains_through_the_gate_and_rollback_restores(
    env: dict[str, str], profile: KafkaProfile, topics: TopicNames, producer: EventProducer
) -> None:
    """Version 1 (reviews only) is champion. A retrain on the same data is no better and stays challenger. A
    retrain `--from-feedback` reads the user-rated comments from the feedback topic, beats v1 on the same held-out
    texts by the margin, becomes champion and the running gateway infers with it; `models rollback
    smolit-sentiment` restores v1 in the gateway too."""
    first = _cli(env, "models", "train-sentiment", "--json")
    assert first.exit_code == 0, first.output
    assert (_json(first.output)["champion"], _json(first.output)["gate"]["reason"]) == ("1", "no champion yet")
    own = _own_feedback()
    for event in own:
        producer.send(Outgoing(Topic.FEEDBACK, str(event.event_id), event))
    producer.flush(10)

    with _gateway_service(env) as url:
        same = _cli(env, "models", "train-sentiment", "--json")
        assert same.exit_code == 0, same.output
        same_run = _json(same.output)
        gate = same_run["gate"]
        assert (same_run["version"], same_run["champion"], same_run["promoted"]) == ("2", "1", False)
        assert gate["decision"] == "challenger" and gate["candidate_macro_f1"] == gate["champion_macro_f1"]
        assert "+ margin 0.01" in gate["reason"] and gate["holdout_size"] == 60

        retrained = _cli(env, "models", "train-sentiment", "--from-feedback", "--json")
        assert retrained.exit_code == 0, retrained.output
        run = _json(retrained.output)
        assert run["feedback"] == {"used": 60, "without_comment": 1, "inferred": 1, "neutral": 0, "duplicates": 1}
        gate = run["gate"]
        assert (run["version"], run["promoted"], run["champion"], run["previous_champion"]) == ("3", True, "3", "1")
        assert gate["holdout_size"] == 60 + 18 and gate["candidate_macro_f1"] >= gate["champion_macro_f1"] + 0.01
        assert run["metrics"]["feedback_holdout_accuracy"] > gate["champion"]["feedback_holdout_accuracy"]
        registry = open_registry(env["SMOLIT_MLFLOW_TRACKING_URI"], Path(env["SMOLIT_DATA_DIR"]), "smolit-models")
        model = next(m for m in registry.models() if m.name == "smolit-sentiment")
        assert model.aliases == {CHAMPION: "3", "previous": "1", "challenger": "3"}
        assert _until_version(url, "3", "erin")["rating"] == -1

        rolled = _cli(env, "models", "rollback", "smolit-sentiment")
        assert rolled.exit_code == 0, rolled.output
        assert "smolit-sentiment version 1 is the champion again (was 3)" in rolled.output
        assert _until_version(url, "1", "fred")["rating"] == -1

    model = next(m for m in registry.models() if m.name == "smolit-sentiment")
    assert (model.aliases[CHAMPION], model.aliases["previous"]) == ("1", "3")
    announced = read_events(profile, topics, Topic.ROUTER_MODELS, expect=3)
    assert [(type(e).__name__, getattr(e, "version", None)) for e in announced][-1] == ("RolledBack", "1")
    assert isinstance(announced[-1], RolledBack) and announced[-1].registry_name == "smolit-sentiment"
    print(f"\nsame data: {same_run['gate']}\nown feedback: {gate}\ncandidate: {run['metrics']}")
