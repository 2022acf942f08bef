"""A real OpenAI-compatible HTTP server (FastAPI + uvicorn on a free port) for integration tests.

It records every request body. Its behaviour is steered by the model name: `sleep:<s>` answers after `<s>` seconds,
`status:<code>` answers with that HTTP error, `tool:<agent>` calls the offered tool to consult `<agent>`,
`calc:<json>` calls `loan_calculator` with `<json>`, `reply:<text>` answers `<text>`; moderation flags inputs
containing "flagme". Other answers quote the system prompt, so tests see which prompt arrived.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


def _fake_openai(received: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    async def _steer(model: str) -> Response | None:
        if model.startswith("sleep:"):
            await asyncio.sleep(float(model.split(":", 1)[1]))
        if model.startswith("status:"):
            code = int(model.split(":", 1)[1])
            return JSONResponse({"error": {"message": f"fake {code}", "type": "fake"}}, status_code=code)
        return None

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        received.append(body)
        if (error := await _steer(body["model"])) is not None:
            return error
        if body["model"].startswith("tool:") and body.get("tools"):
            # `tool:<agent>` with tools offered: ask that agent via the consult_agent tool instead of answering.
            arguments = {"agent": body["model"].split(":", 1)[1], "question": "Can the bank change my card terms?"}
            call = {"id": "call_1", "type": "function", "function": {"name": body["tools"][0]["function"]["name"]}}
            call["function"]["arguments"] = json.dumps(arguments)
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
            head = {"id": "chatcmpl-1", "created": 0, "model": body["model"], "object": "chat.completion"}
            return JSONResponse(head | {"choices": [choice], "usage": usage})
        if body["model"].startswith("calc:") and body.get("tools"):
            # `calc:<json>` with tools offered: call the loan_calculator tool with those raw arguments.
            call = {"id": "call_2", "type": "function"}
            call["function"] = {"name": "loan_calculator", "arguments": body["model"].split(":", 1)[1]}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
            head = {"id": "chatcmpl-2", "created": 0, "model": body["model"], "object": "chat.completion"}
            return JSONResponse(head | {"choices": [choice], "usage": usage})
        if body["model"].startswith("reply:"):  # `reply:<text>` answers exactly `<text>`
            message = {"role": "assistant", "content": body["model"].split(":", 1)[1]}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
            head = {"id": "chatcmpl-3", "created": 0, "model": body["model"], "object": "chat.completion"}
            return JSONResponse(head | {"choices": [choice], "usage": usage})
        # The answer quotes the system prompt, so tests can see which prompt reached the model.
        words = f"Per the {body['messages'][0]['content']} cheques clear in two days [1]".split()
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": 0}
        head = {"id": "chatcmpl-1", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": " ".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse(head | {"object": "chat.completion", "choices": [choice], "usage": usage})

        async def events() -> AsyncIterator[str]:
            chunk = head | {"object": "chat.completion.chunk"}
            for i, word in enumerate(words):
                delta = {"content": word if i == 0 else " " + word} | ({"role": "assistant"} if i == 0 else {})
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                yield f"data: {json.dumps(chunk | {'choices': [choice]})}\n\n"
            stop = {"index": 0, "delta": {}, "finish_reason": "stop"}
            yield f"data: {json.dumps(chunk | {'choices': [stop]})}\n\n"
            if body.get("stream_options", {}).get("include_usage"):
                yield f"data: {json.dumps(chunk | {'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Response:
        body = await request.json()
        received.append(body)
        # Flags any input containing "flagme" for violence, like the real endpoint's result shape.
        hit = "flagme" in str(body["input"])
        categories = {"violence": hit, "harassment": False, "self-harm": False}
        scores = {name: 0.9 if flagged else 0.01 for name, flagged in categories.items()}
        result = {"flagged": hit, "categories": categories, "category_scores": scores}
        return JSONResponse({"id": "modr-1", "model": body.get("model", "m"), "results": [result]})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await request.json()
        received.append(body)
        rng = np.random.default_rng(len(body["input"]))
        # Deliberately not unit length and listed in reverse order, like a sloppy self-hosted server.
        data = [
            {"object": "embedding", "index": i, "embedding": (3.0 * rng.standard_normal(body["dimensions"])).tolist()}
            for i in range(len(body["input"]))
        ][::-1]
        return JSONResponse({"object": "list", "data": data, "model": body["model"], "usage": {}})

    return app


@contextmanager
def running_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Base URL of the running fake server and the list of request bodies it has received."""
    received: list[dict[str, Any]] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound before the thread starts: no race for the port
    config = uvicorn.Config(_fake_openai(received), log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started, "fake OpenAI server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", received
    uv.should_exit = True
    thread.join(timeout=5)
    sock.close()
