"""Body size limit for every request, including chunked uploads that send no Content-Length."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from .auth import error_body

Scope = dict[str, Any]


class BodyLimit:
    """Pure ASGI middleware: reads the body up to `max_bytes` (413 beyond) and replays it to the app.

    The `Content-Length` check in `create_app` refuses honest large uploads before reading; this one also stops
    bodies that arrive in chunks without a length, which would otherwise be buffered whole by the JSON parser.
    """

    def __init__(self, app: Any, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}  # paths allowed a bigger body (`POST /v1/requests` with attachments)

    def limit(self, path: str) -> int:
        return self.larger.get(path, self.max_bytes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        max_bytes = self.limit(scope.get("path", ""))
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > max_bytes:
                message = f"request body over {max_bytes} bytes"
                await JSONResponse(error_body(413, "body_too_large", message), 413)(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
