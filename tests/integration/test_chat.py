"""The OpenAI-compatible chat API, conversations and small talk through the running pipeline, with the real
`openai` client (streaming included) against the gateway served by uvicorn."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from smolit.cli import app as cli
from smolit.contracts import AnswerProduced, RoutingDecided, Topic
from smolit.gateway import GatewayDeps, PendingRequests, create_app
from smolit.infra.cards import load_cards

from ..conftest import read_events
from .chat_stack import ChatStack, running_stack

pytestmark = pytest.mark.integration

CHEQUE = "How do I deposit a cheque for my business?"
FOLLOW_UP = "And what about for a sole trader?"


@pytest.fixture(scope="module")
def stack(broker: str, pool, embedder) -> Iterator[ChatStack]:
    with running_stack(broker, pool, embedder) as running:
        yield running


@pytest.fixture
def client(stack: ChatStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=30)


def _answer(stack: ChatStack, request_id: str) -> AnswerProduced:
    events = read_events(stack.profile, stack.topics, Topic.ANSWERS, expect=50, timeout_s=3)
    [answer] = [e for e in events if isinstance(e, AnswerProduced) and str(e.correlation_id) == request_id]
    return answer


def _decision(stack: ChatStack, request_id: str) -> RoutingDecided:
    events = read_events(stack.profile, stack.topics, Topic.DECISIONS, expect=50, timeout_s=3)
    [decision] = [e for e in events if isinstance(e, RoutingDecided) and str(e.correlation_id) == request_id]
    return decision


def test_openai_client_gets_an_answer_with_usage_and_sources(stack: ChatStack, client: openai.OpenAI) -> None:
    """A plain completion: the answer event's text, token counts and sources; request id and agent in headers."""
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "smolit" and {"smolit/finance", "smolit/legal", "smolit/health", "smolit/general"} <= set(ids)

    raw = client.chat.completions.with_raw_response.create(
        model="smolit", messages=[{"role": "user", "content": CHEQUE}]
    )
    completion = raw.parse()
    request_id = raw.headers["x-smolit-request-id"]
    assert raw.headers["x-smolit-agent"] == "finance"
    event = _answer(stack, request_id)
    assert completion.choices[0].message.content == event.answer and "cheque" in event.answer
    assert completion.choices[0].finish_reason == "stop" and completion.model == "smolit/finance"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        event.prompt_tokens,
        event.completion_tokens,
    )
    assert completion.usage.prompt_tokens > 0
    ext = completion.model_extra["smolit"]
    assert ext["request_id"] == request_id and ext["agent"] == "finance"
    assert [s["source"] for s in ext["sources"]] == ["fiqa#cheque"]


def test_streaming_sends_the_answer_in_chunks(stack: ChatStack, client: openai.OpenAI) -> None:
    """`stream=True`: SSE chunks that join to the AnswerProduced text, then usage (include_usage) and [DONE]."""
    with client.chat.completions.with_streaming_response.create(
        model="smolit",
        messages=[{"role": "user", "content": CHEQUE}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-smolit-request-id"]
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    event = _answer(stack, request_id)
    assert len(contents) > 1 and "".join(contents) == event.answer
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == event.completion_tokens
    assert chunks[0].model_extra["smolit"]["agent"] == "finance"


def test_model_names_the_agent(stack: ChatStack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="smolit/legal", messages=[{"role": "user", "content": CHEQUE}]
    )
    assert raw.headers["x-smolit-agent"] == "legal" and raw.parse().model == "smolit/legal"


def test_errors_have_the_openai_shape(stack: ChatStack, client: openai.OpenAI) -> None:
    """Unknown model 404, invalid messages 400, too long 413: the client raises its usual exceptions."""
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found" and "smolit/finance" in missing.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="smolit", messages=[])
    assert empty.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smolit", messages=[{"role": "assistant", "content": "hello"}])
    with pytest.raises(openai.APIStatusError) as long:
        client.chat.completions.create(model="smolit", messages=[{"role": "user", "content": "tax " * 2000}])
    assert long.value.status_code == 413 and long.value.code == "request_too_large"
    raw = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": "smolit"})
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_timeout_answers_504_with_the_request_id(pool, producer) -> None:
    """No pipeline answers: 504 in the OpenAI shape, and the request stays recorded for GET /v1/requests/{id}."""
    app = create_app(
        GatewayDeps(
            producer=producer,
            pool=pool,
            pending=PendingRequests(),
            cards=load_cards(),
            registry=CollectorRegistry(),
            broker_check=lambda: None,
            request_timeout_s=0.2,
            max_request_chars=4000,
        )
    )
    with TestClient(app) as http:
        response = http.post(
            "/v1/chat/completions", json={"model": "smolit", "messages": [{"role": "user", "content": CHEQUE}]}
        )
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        request_id = response.headers["x-smolit-request-id"]
        assert http.get(f"/v1/requests/{request_id}").status_code == 202


def test_follow_up_stays_in_the_conversation(stack: ChatStack) -> None:
    """Native API and `smolit ask --conversation`: the follow-up alone would go to the fallback; with the
    conversation's last turn it stays with finance, and the conversation lists both turns."""
    conversation = f"conv-{uuid.uuid4().hex[:8]}"
    runner = CliRunner()
    for question in ("How should I pay myself from my limited company to minimise tax?", FOLLOW_UP):
        asked = runner.invoke(cli, ["ask", question, "--conversation", conversation, "--url", stack.url])
        assert asked.exit_code == 0, asked.output
        assert f"conversation {conversation}" in asked.output
    turns = httpx.get(f"{stack.url}/v1/conversations/{conversation}").json()["turns"]
    assert [(t["text"], t["agent"]) for t in turns][1] == (FOLLOW_UP, "finance")
    assert turns[0]["agent"] == "finance"
    assert _decision(stack, turns[1]["request_id"]).context_used is True
    alone = httpx.post(f"{stack.url}/v1/requests", json={"text": FOLLOW_UP}, timeout=30)
    assert alone.json()["agent"] == "general"
    assert httpx.get(f"{stack.url}/v1/conversations/nope-{uuid.uuid4()}").status_code == 404


def test_openai_messages_are_the_context(stack: ChatStack, client: openai.OpenAI) -> None:
    """For the OpenAI API the messages list is the conversation: earlier user turns route the follow-up."""
    messages = [
        {"role": "user", "content": "How should I pay myself from my limited company to minimise tax?"},
        {"role": "assistant", "content": "Salary up to the allowance, then dividends."},
        {"role": "user", "content": "And what about for a sole trader?"},
    ]
    completion = client.chat.completions.create(model="smolit", messages=messages)  # type: ignore[arg-type]
    ext = completion.model_extra["smolit"]
    assert ext["agent"] == "finance" and ext["context_used"] is True


def test_small_talk_gets_a_short_reply_from_the_general_agent(stack: ChatStack, client: openai.OpenAI) -> None:
    """No knowledge search, no sources, no tokens; the next real question is not routed by the greeting."""
    conversation = f"conv-{uuid.uuid4().hex[:8]}"
    raw = client.chat.completions.with_raw_response.create(
        model="smolit",
        messages=[{"role": "user", "content": "Hi there!"}],
        extra_headers={"X-Smolit-Conversation": conversation},
    )
    hello = raw.parse()
    assert raw.headers["x-smolit-agent"] == "general"
    assert hello.choices[0].message.content == "Hello! What can I help you with?"
    ext = hello.model_extra["smolit"]
    assert ext["small_talk"] == "greeting" and ext["sources"] == [] and ext["backend"] == "smalltalk"
    assert hello.usage is not None and hello.usage.total_tokens == 0
    thanks = client.chat.completions.create(
        model="smolit",
        messages=[{"role": "user", "content": "What are the side effects of metformin?"}],
        extra_headers={"X-Smolit-Conversation": conversation},
    )
    assert thanks.model_extra["smolit"]["agent"] == "health"


def test_openapi_schema_lists_native_and_openai_endpoints(stack: ChatStack) -> None:
    paths = httpx.get(f"{stack.url}/openapi.json").json()["paths"]
    for path in (
        "/v1/requests",
        "/v1/feedback",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/conversations/{conversation_id}",
    ):
        assert path in paths
    assert "requestBody" in paths["/v1/chat/completions"]["post"]
