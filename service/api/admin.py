"""The admin API, a small Starlette app mounted at /admin.

Not BentoML endpoints: those are POST-only and turn 401/403 into a generic body.
GET  /admin/state    what this worker is doing: routing mode, circuit, drift, faults, config version
POST /admin/routing  {"mode": "fallback" | "auto"} with `Authorization: Bearer <MLGUARD_ADMIN_TOKEN>`;
                     no token configured: writes are disabled (403); missing or wrong token: 401
                     (service/api/auth.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.auth import BearerAuth, admin_auth

log = logging.getLogger("mlguard.admin")


class RoutingChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    mode: Literal["auto", "fallback"]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def admin_app(runtime: Callable[[], Any], auth: BearerAuth | None = None) -> Starlette:
    """`runtime` returns this worker's GuardedRuntime (None until the worker has built it);
    `auth` guards the writes (default: MLGUARD_ADMIN_TOKEN, read now)."""
    auth = auth or admin_auth()

    async def state(request: Request) -> JSONResponse:
        rt = runtime()
        if rt is None:
            return _error(503, "worker starting")
        return JSONResponse(rt.admin_view())

    async def routing(request: Request) -> JSONResponse:
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
            Route("/routing", auth.protect(routing), methods=["POST"]),
        ]
    )

