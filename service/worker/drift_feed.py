"""A worker's side of the monitoring process: buffer served rows, flush them to it in the
background, and keep the routing verdicts it answers (drift, and live performance on labels).

`offer` is the only call on the request path: it appends references to a bounded deque, with the
request's client identity when `drift.client_header` or `drift.trust_forwarded_for` gives one
(read from the request's headers, which service/api/client_identity.py keeps in `REQUEST_HEADERS`;
hashed here, once per request, so the raw value never reaches the buffer or the drift process). A task
on the worker's event loop drains it every flush interval (half a check interval, at most a
second), which also fetches the verdict, so every worker learns a new decision within one check
interval. A task, not a thread: BentoML's dependency client is bound to the worker's event loop.
If the drift process cannot be reached, serving goes on: the error is counted and
`drift.on_error` decides.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import pickle
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from monitors.periodic import periodic_task
from service.scoring.prediction import ROUTE_MODEL, Prediction
from service.worker.config import DriftConfig, Settings

log = logging.getLogger("mlguard.drift")

FLUSH_ROWS = 5_000  # rows sent in one call at most
CALL_TIMEOUT_S = 5.0  # a hung drift process holds the flush task no longer than this
STARTUP_GRACE_S = 120.0  # the drift process starts after the workers (it loads evidently)

# The current request's raw ASGI headers, set per request by service/api/client_identity.py.
REQUEST_HEADERS: ContextVar[list[tuple[bytes, bytes]] | None] = ContextVar(
    "mlguard_request_headers", default=None
)
FORWARDED_FOR = b"x-forwarded-for"
IDENTITY_PERSON = b"mlguard-client"  # blake2b personalisation: these digests are client identities


def request_client(drift: DriftConfig) -> str | None:
    """The hashed identity of the current request's client, or None (none configured or sent).

    `drift.client_header` when the request carries it; else, with `drift.trust_forwarded_for`,
    the LAST address of X-Forwarded-For: the one the trusted proxy appended. Everything before it
    is whatever the client wrote (a client rotating a made-up first address would be a new
    client on every request). The peer address is never used: behind a load balancer it is the
    balancer's, one "client" for everyone."""
    if not drift.client_header and not drift.trust_forwarded_for:
        return None
    headers = REQUEST_HEADERS.get()
    if not headers:
        return None
    wanted = drift.client_header.encode("latin-1")
    forwarded = None
    for name, value in headers:
        if name == wanted and value:
            return _digest(value.strip())
        if name == FORWARDED_FOR:
            forwarded = value
    if forwarded is not None and drift.trust_forwarded_for:
        last = forwarded.rsplit(b",", 1)[-1].strip()
        if last:
            return _digest(b"addr:" + last)
    return None


def _digest(value: bytes) -> str:
    return hashlib.blake2b(value, digest_size=8, person=IDENTITY_PERSON).hexdigest()


class DriftFeed:
    def __init__(
        self,
        client: Callable[[], Any],  # () -> the drift service's proxy (resolved lazily, in the task)
        version: Callable[[], str | None],  # () -> the model version this worker serves now
        settings: Callable[[], Settings],
        count_error: Callable[[], None],
    ) -> None:
        self._client = client
        self._version = version
        self._settings = settings
        self._count_error = count_error
        # (row, the model's prediction or None, the client's hashed identity or None)
        self._buffer: deque[tuple[dict[str, Any], float | str | None, str | None]] = deque()
        self._routing = False  # the drift process's last verdict
        self._below_rules = False  # its last performance verdict (monitors/performance/)
        self._failing = False
        self._last_error_count = -float("inf")
        self._task: asyncio.Task | None = None
        self._started = time.monotonic()
        self._contacted = False  # reached the drift process at least once

    def remote(self) -> Any:
        """The drift process's proxy (for the /monitoring endpoints)."""
        return self._client()

    def offer(
        self, rows: list[dict[str, Any]], predictions: list[Prediction], cfg: Settings
    ) -> None:
        drift = cfg.drift
        if drift.enabled:
            client = request_client(drift)
            buffer = self._buffer
            buffer.extend(
                (row, p.output.score if p.route == ROUTE_MODEL else None, client)
                for row, p in zip(rows, predictions)
            )
            # The window keeps only its last window_size rows, so older buffered rows would be
            # pushed out on arrival anyway: drop them here and hold no more memory than that.
            for _ in range(len(buffer) - drift.window_size):
                buffer.popleft()

    def drift_active(self, cfg: Settings) -> bool:
        drift = cfg.drift
        if not drift.enabled or drift.action != "route":
            return False
        if self._failing and drift.on_error == "clear":
            return False
        return self._routing  # failing with on_error=keep: the last verdict stands

    def below_rules(self, cfg: Settings) -> bool:
        """Live labels say the model is worse than the rules, and performance.action is route."""
        perf = cfg.performance
        if not perf.enabled or perf.action != "route":
            return False
        if self._failing and cfg.drift.on_error == "clear":
            return False
        return self._below_rules

    async def flush(self) -> None:
        """Send what is buffered (possibly nothing) and take the verdict back."""
        batch: list[tuple[dict[str, Any], float | str | None, str | None]] = []
        while self._buffer and len(batch) < FLUSH_ROWS:
            batch.append(self._buffer.popleft())
        # One pickled message: ~0.3 ms for 800 rows, where BentoML's client validated and
        # copied the rows field by field (~5 ms with the event loop stopped, twice a second).
        message = pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)
        try:
            answer = await asyncio.wait_for(
                self._client().to_async.ingest(batch=message, version=self._version()),
                CALL_TIMEOUT_S,
            )
        except Exception as exc:  # noqa: BLE001 -- a dead or slow drift process must not reach serving
            self._on_failure(exc)
            return
        if self._failing:
            log.info("drift process reachable")
        self._failing = False
        self._contacted = True
        self._routing = bool(answer["routing_to_fallback"])
        self._below_rules = bool(answer.get("performance_below_rules"))

    def _on_failure(self, exc: Exception) -> None:
        now = time.monotonic()
        if not self._contacted and now - self._started < STARTUP_GRACE_S:
            self._failing = True  # still starting: on_error applies, but it is no error yet
            return
        if not self._failing:
            log.error("drift process unreachable (%s); drift.on_error=%s applies", exc,
                      self._settings().drift.on_error)
        self._failing = True
        # One error per check interval per worker, not one per flush.
        if now - self._last_error_count >= self._settings().drift.check_interval_s:
            self._last_error_count = now
            self._count_error()

    def interval(self) -> float:
        return min(1.0, self._settings().drift.check_interval_s / 2)

    def start(self) -> None:
        """Called on the worker's event loop (BentoML builds the service instance there)."""
        if self._task is None:
            self._task = periodic_task("mlguard-drift-feed", self._tick, self.interval)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _tick(self) -> None:
        cfg = self._settings()
        if not cfg.drift.enabled:
            self._buffer.clear()
            if not cfg.performance.enabled:
                return
        await self.flush()  # with drift off, an empty flush still fetches the performance verdict
