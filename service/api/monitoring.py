"""GET /monitoring/drift and /monitoring/drift/report: a small Starlette app mounted on the API
service (BentoML API methods are POST-only). Both ask the drift process; the page is rendered
there, on demand, so the periodic checks stay cheap."""
from __future__ import annotations

import asyncio
import logging

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("mlguard.drift")

# While the drift process starts, its socket already accepts connections that nobody answers yet:
# the status must still answer promptly (503). The report may take long to render.
STATUS_TIMEOUT_S = 5.0
REPORT_TIMEOUT_S = 120.0


def _drift_client():
    feed = bentoml.get_current_service().runtime.drift
    if feed is None:
        raise LookupError("no drift process")
    return feed.remote().to_async


async def drift_status(request: Request) -> Response:
    try:
        return JSONResponse(await asyncio.wait_for(_drift_client().status(), STATUS_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 -- say the drift process is down, never a 500
        log.warning("drift status unavailable: %r", exc)
        return JSONResponse({"error": "drift process unreachable"}, status_code=503)


async def drift_report(request: Request) -> Response:
    try:
        return HTMLResponse(await asyncio.wait_for(_drift_client().report(), REPORT_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 -- as above
        log.warning("drift report unavailable: %r", exc)
        return HTMLResponse("<p>The drift process is unreachable.</p>", status_code=503)


monitoring_app = Starlette(
    routes=[
        Route("/drift", drift_status, methods=["GET"]),
        Route("/drift/report", drift_report, methods=["GET"]),
    ]
)
