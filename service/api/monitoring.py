"""GET /monitoring/...: a small Starlette app mounted on the API service (BentoML API methods are
POST-only). Every route asks the drift process, where the window and the labelled rows live.

GET /monitoring/drift         the drift verdict (JSON); public, like /metrics: no customer data
GET /monitoring/drift/report  the Evidently page of the window: live customers' inputs, and about
                              a second of CPU per render, so behind the monitoring token and
                              cached per worker for `drift.report_cache_s`
GET /monitoring/performance   live performance on labelled predictions (JSON); monitoring token
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from service.api.auth import BearerAuth, monitoring_auth

log = logging.getLogger("mlguard.drift")

# While the drift process starts, its socket already accepts connections that nobody answers yet:
# the JSON routes must still answer promptly (503). The report may take long to render.
STATUS_TIMEOUT_S = 5.0
REPORT_TIMEOUT_S = 120.0
CACHE_HEADER = "X-Mlguard-Cache"


def _runtime() -> Any:
    return bentoml.get_current_service().runtime


def _drift_client() -> Any:
    feed = _runtime().drift
    if feed is None:
        raise LookupError("no drift process")
    return feed.remote().to_async


@dataclass(frozen=True)
class CachedPage:
    html: str
    age_s: float  # since the render finished
    source: Literal["hit", "miss", "shared"]  # cached; rendered for this call; joined a render


class ReportCache:
    """The last drift report this worker rendered, reused while it is younger than `max_age_s`.

    Callers that arrive while a render runs wait for that render instead of starting their own:
    without it, N callers cost N renders (measured: ~1 s of CPU and ~4 MB each in the drift
    process; 4 concurrent callers got 0.9 reports/s). A failed render is not cached: each waiter
    gets the error, the next call tries again.
    """

    def __init__(
        self, render: Callable[[], Awaitable[str]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._render = render
        self._clock = clock
        self._page: tuple[str, float] | None = None  # html, when its render finished
        self._running: asyncio.Task[str] | None = None

    async def get(self, max_age_s: float) -> CachedPage:
        page = self._page
        if page is not None and self._clock() - page[1] < max_age_s:
            return CachedPage(page[0], self._clock() - page[1], "hit")
        source: Literal["miss", "shared"] = "shared"
        if self._running is None:
            source = "miss"
            self._running = asyncio.ensure_future(self._fill())
            # A render whose callers all left still finishes and is cached; its error, if any,
            # is read here so that asyncio does not report it as never retrieved.
            self._running.add_done_callback(lambda t: t.cancelled() or t.exception())
        # shield: a caller that disconnects must not cancel the render the others wait for
        html = await asyncio.shield(self._running)
        return CachedPage(html, 0.0, source)

    async def _fill(self) -> str:
        try:
            html = await self._render()
            self._page = (html, self._clock())
            return html
        finally:
            self._running = None


async def _render_report() -> str:
    return await asyncio.wait_for(_drift_client().report(), REPORT_TIMEOUT_S)


async def drift_status(request: Request) -> Response:
    try:
        return JSONResponse(await asyncio.wait_for(_drift_client().status(), STATUS_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 -- say the drift process is down, never a 500
        log.warning("drift status unavailable: %r", exc)
        return JSONResponse({"error": "drift process unreachable"}, status_code=503)


async def performance(request: Request) -> Response:
    try:
        return JSONResponse(
            await asyncio.wait_for(_drift_client().performance(), STATUS_TIMEOUT_S)
        )
    except Exception as exc:  # noqa: BLE001 -- as above
        log.warning("live performance unavailable: %r", exc)
        return JSONResponse({"error": "drift process unreachable"}, status_code=503)


def monitoring_app(auth: BearerAuth | None = None) -> Starlette:
    """The /monitoring app of one worker. `auth` guards the customer-data routes (default:
    MLGUARD_MONITORING_TOKEN or MLGUARD_ADMIN_TOKEN, read now). The report's cache period is the
    worker's current `drift.report_cache_s`, so a config reload changes it."""
    auth = auth or monitoring_auth()
    cache = ReportCache(_render_report)

    async def drift_report(request: Request) -> Response:
        try:
            page = await cache.get(_runtime().settings().drift.report_cache_s)
        except Exception as exc:  # noqa: BLE001 -- as above
            log.warning("drift report unavailable: %r", exc)
            return HTMLResponse("<p>The drift process is unreachable.</p>", status_code=503)
        return HTMLResponse(
            page.html,
            headers={
                CACHE_HEADER: page.source,
                "Age": str(math.floor(page.age_s)),
                # The page holds customers' inputs: no copy in shared caches or on a browser's disk.
                "Cache-Control": "private, no-store",
            },
        )

    return Starlette(
        routes=[
            Route("/drift", drift_status, methods=["GET"]),
            Route("/drift/report", auth.protect(drift_report), methods=["GET"]),
            Route("/performance", auth.protect(performance), methods=["GET"]),
        ]
    )
