"""Keep the current request's headers where the drift feed can read who sent the rows.

The drift window caps each client's share (`drift.client_header`, `drift.trust_forwarded_for`;
docs/DRIFT.md). The rows reach the window through the pipeline's recorder, which has no request
at hand, so this middleware puts the request's raw header list in a context variable for the
request's duration: one reference, no parsing, no copy. `request_client()` in
service/worker/drift_feed.py reads the configured header from it and hashes it, once per request.

Pure ASGI, like body_limit.py. Declaring `ctx: bentoml.Context` on the endpoints would cost about
as little (~3 µs a request, measured) but BentoML then overwrites the status of a response the
endpoint returns itself (predict_batch's 400) with the context's 200.
"""
from __future__ import annotations

from service.api.body_limit import ASGIApp, Receive, Scope, Send
from service.worker.drift_feed import REQUEST_HEADERS


class ClientIdentity:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = REQUEST_HEADERS.set(scope["headers"])
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_HEADERS.reset(token)
