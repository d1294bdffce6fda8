"""The admin API, a small Starlette app mounted at /admin.

Not BentoML endpoints: those are POST-only and turn 401/403 into a generic body.
GET  /admin/state             what this worker is doing: routing mode, circuit, drift, faults,
                              config version
POST /admin/routing           {"mode": "fallback" | "auto", "actor"?: "...", "reason"?: "..."}
                              with `Authorization: Bearer <MLGUARD_ADMIN_TOKEN>`; the caller's
                              address is recorded as the change's `source`. 503 when the shared
                              store cannot take the change (nothing changed anywhere).
GET  /admin/routing/history   the recorded changes, newest first (`?limit=`, default 100), with
                              the admin token: the whole history from a PostgreSQL store, the
                              last 100 changes from the single-instance file.
No token configured: the token-guarded routes are disabled (403); missing or wrong token: 401
(service/api/auth.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.auth import BearerAuth, admin_auth
from service.worker.admin_state import AdminStateUnavailable

log = logging.getLogger("mlguard.admin")

MAX_ACTOR = 100
MAX_REASON = 500
HISTORY_LIMIT, MAX_HISTORY_LIMIT = 100, 1000
BODY_SHAPE = (
    f'{{"mode": "auto" | "fallback", "actor": string of <= {MAX_ACTOR} characters (optional), '
    f'"reason": string of <= {MAX_REASON} characters (optional)}}'
)


class RoutingChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    mode: Literal["auto", "fallback"]
    actor: str | None = Field(None, max_length=MAX_ACTOR)  # who, as the operator says
    reason: str | None = Field(None, max_length=MAX_REASON)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def admin_app(runtime: Callable[[], Any], auth: BearerAuth | None = None) -> Starlette:
    """`runtime` returns this worker's GuardedRuntime (None until the worker has built it);
    `auth` guards the writes and the history (default: MLGUARD_ADMIN_TOKEN, read now)."""
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
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            detail = f"{where}: {first['msg']}" if where else first["msg"]
            return _error(400, f"body must be {BODY_SHAPE}: {detail}")
        rt = runtime()
        if rt is None:
            return _error(503, "worker starting")
        source = request.client.host if request.client else "unknown"
        try:
            # In a thread: with a shared store, the change is a database transaction.
            new = await run_in_threadpool(
                rt.admin.set_mode, change.mode, source, change.actor, change.reason
            )
        except AdminStateUnavailable as exc:
            log.error("admin routing change to %s by %s refused: %s", change.mode, source, exc)
            return _error(503, f"override not changed: {exc}")
        return JSONResponse({**rt.admin_view(), "change": {
            "mode": new.mode, "actor": new.actor, "source": new.changed_by,
            "reason": new.reason, "changed_at": new.changed_at,
        }})

    async def history(request: Request) -> JSONResponse:
        raw = request.query_params.get("limit", str(HISTORY_LIMIT))
        try:
            limit = int(raw)
            if not 1 <= limit <= MAX_HISTORY_LIMIT:
                raise ValueError
        except ValueError:
            return _error(400, f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}, not {raw!r}")
        rt = runtime()
        if rt is None:
            return _error(503, "worker starting")
        try:
            changes = await run_in_threadpool(rt.admin.history, limit)
        except AdminStateUnavailable as exc:
            return _error(503, f"history unavailable: {exc}")
        return JSONResponse({"app": rt.app.name, "changes": [asdict(c) for c in changes]})

    return Starlette(
        routes=[
            Route("/state", state, methods=["GET"]),
            Route("/routing", auth.protect(routing), methods=["POST"]),
            Route("/routing/history", auth.protect(history), methods=["GET"]),
        ]
    )
