"""The admin API, a small Starlette app mounted at /admin.

Not BentoML endpoints: those are POST-only and turn 401/403 into a generic body.
GET  /admin/state    what this worker is doing: routing mode, circuit, drift, faults, config version
POST /admin/routing  {"mode": "fallback" | "auto"} with `Authorization: Bearer <MLGUARD_ADMIN_TOKEN>`;
                     no token configured: writes are disabled (403); missing or wrong token: 401.
"""
from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKEN_ENV = "MLGUARD_ADMIN_TOKEN"

log = logging.getLogger("mlguard.admin")


class RoutingChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    mode: Literal["auto", "fallback"]


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def admin_app(runtime: Callable[[], Any], token: str | None = None) -> Starlette:
    """`runtime` returns this worker's GuardedRuntime (None until the worker has built it)."""
    token = os.environ.get(TOKEN_ENV, "") if token is None else token
    expected = token.encode()

    def authorize(request: Request) -> JSONResponse | None:
        if not expected:
            return _error(403, f"admin writes are disabled: {TOKEN_ENV} is not set")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not tell how much of the token was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        return None

    async def state(request: Request) -> JSONResponse:
        rt = runtime()
        if rt is None:
            return _error(503, "worker starting")
        return JSONResponse(rt.admin_view())

    async def routing(request: Request) -> JSONResponse:
        refused = authorize(request)
        if refused is not None:
            return refused
        try:
            change = RoutingChange.model_validate_json(await request.body())
        except ValidationError as exc:
            detail = exc.errors()[0]["msg"]
            return _error(400, f'body must be {{"mode": "auto" | "fallback"}}: {detail}')
        rt = runtime()
        if rt is None:
            return _error(503, "worker starting")
        source = request.client.host if request.client else "unknown"
        rt.admin.set_mode(change.mode, source)
        return JSONResponse(rt.admin_view())

    return Starlette(
        routes=[
            Route("/state", state, methods=["GET"]),
            Route("/routing", routing, methods=["POST"]),
        ]
    )

