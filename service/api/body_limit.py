"""Refuse request bodies over `server.max_body_bytes` with 413, before anything parses them.

Pure ASGI (Starlette's style), not BaseHTTPMiddleware, which costs throughput on every request.
A declared Content-Length over the limit is refused without reading a byte. A body without one
(chunked) is read up to the limit and replayed to the app; one byte more and it is refused. The
app buffers whole bodies anyway, so holding at most `max_body_bytes` here costs no extra memory.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.max_body_bytes:
                await self._refuse(send, declared)
                return
            await self.app(scope, receive, send)  # the HTTP server holds the body to its length
            return
        buffered = await self._read_limited(receive)
        if buffered is None:
            await self._refuse(send, None)
            return
        await self.app(scope, _replay(buffered, receive), send)

    async def _read_limited(self, receive: Receive) -> list[Message] | None:
        """The body's messages, or None once they exceed the limit (or the client left)."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # a disconnect: let the app see it
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, send: Send, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "a streamed body"
        await json_error(send, 413, f"request body too large: {size}, the limit is {self.max_body_bytes} bytes")


async def json_error(send: Send, status: int, message: str) -> None:
    """Answer `{"error": message}` and close: an unread body makes the connection unusable."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn refuses a malformed length before we ever see it
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # after the body: wait for the disconnect, as the app expects

    return replayed
