"""Outcomes and the prediction log over HTTP: a small Starlette app mounted at the root.

POST   /feedback                 {"request_id": "...", "outcome": ...} or {"outcomes": [...]}
                                 with `Authorization: Bearer <MLGUARD_FEEDBACK_TOKEN>`
GET    /predictions/{request_id} the record a complaint quotes: answer, reasons, outcome
                                 (monitoring token, or the admin token)
DELETE /predictions/{request_id} erase one prediction and its outcome (admin token)

One outcome: 200 recorded (or the same outcome again: duplicate), 202 pending (the id was issued
within `store.pending_horizon_s` and its row is still in some worker's write buffer: stored now,
joined when the row lands), 404 never issued, 409 a different outcome is already recorded. A
batch answers 200 with each id's status. An acknowledged outcome is committed before the answer.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api.auth import admin_auth, feedback_auth, monitoring_auth
from service.api.responses import json_response
from service.scoring.prediction import issued_at
from service.store import FeedbackResult, Outcome
from service.worker.prediction_log import CALL_TIMEOUT_S as HANDOVER_S

T = TypeVar("T")
# How long after its issue a prediction's row may still be on its way to the log: a few flushes
# (at least BUFFERED_S), then a hand-over to the monitoring process of at most HANDOVER_S.
BUFFERED_S = 5.0

STATUS_CODES = {
    FeedbackResult.RECORDED: 200,
    FeedbackResult.DUPLICATE: 200,
    FeedbackResult.PENDING: 202,
    FeedbackResult.UNKNOWN: 404,
    FeedbackResult.CONFLICT: 409,
}


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64)
    # Strict: pydantic would otherwise read `true` as 1.0, a regression outcome nobody sent.
    outcome: StrictStr | StrictFloat | StrictInt


class OutcomeBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcomes: list[OutcomeIn] = Field(min_length=1)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _in_store(call: Callable[..., T], *args: Any) -> T | JSONResponse:
    """`call(*args)` in a thread (the store blocks); a 503 to answer when the store is down."""
    try:
        return await run_in_threadpool(call, *args)
    except Exception as exc:  # noqa: BLE001 -- the store is down: the caller must retry
        return _error(503, f"the store is unreachable, retry later ({type(exc).__name__})")


def check_outcome(task: Any, outcome: Any) -> str | float:
    """The outcome as stored: a declared class (classification) or a finite number (regression)."""
    if task.kind == "regression":
        if isinstance(outcome, bool) or not isinstance(outcome, int | float) or not math.isfinite(outcome):
            raise ValueError(f"outcome must be a finite number, got {outcome!r}")
        return float(outcome)
    if not isinstance(outcome, str) or outcome not in task.classes:
        raise ValueError(f"outcome must be one of the classes {list(task.classes)}, got {outcome!r}")
    return outcome


def records_app(runtime: Callable[[], Any]) -> Starlette:
    """`runtime` returns this worker's GuardedRuntime (None until the worker has built it)."""
    feedback_token, read_token, delete_token = feedback_auth(), monitoring_auth(), admin_auth()

    def store_of() -> tuple[Any, JSONResponse | None]:
        rt = runtime()
        if rt is None:
            return None, _error(503, "worker starting")
        if rt.records is None:
            return None, _error(503, "the prediction log is off (store.enabled: false)")
        return rt, None

    async def feedback(request: Request) -> JSONResponse:
        rt, refused = store_of()
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be JSON")
        batch = isinstance(body, dict) and "outcomes" in body
        try:
            items = OutcomeBatchIn.model_validate(body).outcomes if batch else [OutcomeIn.model_validate(body)]
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "body"
            rt.store_metrics.feedback.labels("invalid").inc()
            return _error(400, f"{where}: {err['msg']}")
        cfg = rt.settings()
        if len(items) > cfg.server.max_batch_size:
            rt.store_metrics.feedback.labels("invalid").inc(len(items))
            return _error(400, f"outcomes: {len(items)} items, more than the limit of "
                               f"{cfg.server.max_batch_size}")
        try:
            values = [check_outcome(rt.app.task, item.outcome) for item in items]
        except ValueError as exc:
            rt.store_metrics.feedback.labels("invalid").inc(len(items))
            return _error(400, str(exc))
        now = time.time()
        horizon = cfg.store.pending_horizon_s
        entries = []
        for item, value in zip(items, values):
            issued = issued_at(item.request_id)
            entries.append(Outcome(item.request_id, value, now,
                                   pending_ok=issued is not None and now - issued <= horizon))
        results = await _in_store(rt.records.add_outcomes, entries)
        if isinstance(results, JSONResponse):
            return results
        for entry, result in zip(entries, results):
            rt.store_metrics.feedback.labels(result.value).inc()
            issued = issued_at(entry.request_id)
            if issued is not None and result in (FeedbackResult.RECORDED, FeedbackResult.PENDING):
                rt.store_metrics.label_delay.observe(max(0.0, now - issued))
        if batch:
            counts: dict[str, int] = {r.value: 0 for r in FeedbackResult}
            for r in results:
                counts[r.value] += 1
            return JSONResponse({
                "counts": counts,
                "results": [{"request_id": e.request_id, "status": r.value}
                            for e, r in zip(entries, results)],
            })
        (entry,), (result,) = entries, results
        body = {"request_id": entry.request_id, "status": result.value, "outcome": entry.outcome}
        if result is FeedbackResult.UNKNOWN:
            body["error"] = "no prediction was issued with this request_id"
        elif result is FeedbackResult.CONFLICT:
            body["error"] = "a different outcome is already recorded for this request_id"
        return JSONResponse(body, status_code=STATUS_CODES[result])

    async def get_prediction(request: Request) -> JSONResponse:
        rt, refused = store_of()
        if refused is not None:
            return refused
        request_id = request.path_params["request_id"]
        record = await _in_store(rt.records.get, request_id)
        if isinstance(record, JSONResponse):
            return record
        if record is None:
            return _error(404, f"no prediction {request_id} in the log (unknown, deleted, past "
                               "retention, or still in a write buffer for a moment)")
        return json_response(record)  # NaN in a logged row (a schema may allow it) as null, not a 500

    async def delete_prediction(request: Request) -> JSONResponse:
        rt, refused = store_of()
        if refused is not None:
            return refused
        request_id = request.path_params["request_id"]
        deleted = await _in_store(rt.records.delete, request_id)
        if isinstance(deleted, JSONResponse):
            return deleted
        if not deleted:
            issued = issued_at(request_id)
            buffered_s = max(BUFFERED_S, 4 * rt.settings().store.flush_interval_s) + HANDOVER_S
            if issued is not None and time.time() - issued <= buffered_s:
                # Issued moments ago, its row may still be in a worker's write buffer: a 404
                # would tell the client there is nothing to erase, and the row would land after.
                return JSONResponse(
                    {"error": f"prediction {request_id} is not in the log yet (it may still be in "
                              "a write buffer): retry in a few seconds"},
                    status_code=503, headers={"Retry-After": "2"},
                )
            return _error(404, f"no prediction {request_id} in the log")
        return JSONResponse({"request_id": request_id, "deleted": True})

    return Starlette(routes=[
        Route("/feedback", feedback_token.protect(feedback), methods=["POST"]),
        Route("/predictions/{request_id}", read_token.protect(get_prediction), methods=["GET"]),
        Route("/predictions/{request_id}", delete_token.protect(delete_prediction), methods=["DELETE"]),
    ])
