"""Refuse request bodies that are not JSON with 415, before BentoML picks a parser for them.

BentoML chooses its deserializer from the Content-Type: multipart/form-data (and urlencoded
forms) go to a multipart parser that answers a malformed body with a 500. Every mlguard endpoint
takes JSON, so anything else is refused here. No Content-Type at all is read as JSON, as BentoML does.
Pure ASGI, like body_limit.py.
"""
from __future__ import annotations

from service.api.body_limit import ASGIApp, Receive, Scope, Send, json_error

JSON = b"application/json"


class JsonOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            media_type = _media_type(scope)
            if media_type is not None and media_type != JSON:
                shown = media_type.decode("latin-1")[:100]
                await json_error(send, 415, f"content type {shown!r} is not supported; send application/json")
                return
        await self.app(scope, receive, send)


def _media_type(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return None
