"""The write-behind log: keeps prediction-store writes off the request path.

`append` only queues (no I/O, no exception); a daemon thread prepares and writes the queue in
batches. When the store is slow or down, the queue is bounded: the oldest rows are dropped and
counted, never lost silently. At every moment

    appended == written + dropped + buffered

(`counts()` shows the four), which the Prometheus counter and the tests rely on.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Count = Callable[[int], None]


class RecordSink(Protocol[R]):
    """Where batches go: any object whose `write` raises on failure (the prediction log's sinks
    are in service/worker/prediction_log.py)."""

    def write(self, records: Sequence[R]) -> None: ...


class Backoff:
    """Delay before the next write after failures: `initial_s`, doubling, capped at `max_s`."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 5.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.delay_s = 0.0  # 0: the store is healthy, write at the next flush

    def failed(self) -> float:
        self.delay_s = self.initial_s if self.delay_s == 0 else min(self.delay_s * 2, self.max_s)
        return self.delay_s

    def succeeded(self) -> None:
        self.delay_s = 0.0


@dataclass(frozen=True, slots=True)
class LogCounts:
    """Rows through the log so far; appended == written + dropped + buffered."""

    appended: int
    written: int
    dropped: int
    buffered: int  # queued, awaiting a retry, or being written right now


def _ignore(_: int) -> None:
    pass


class WriteBehindLog(Generic[T, R]):
    """A bounded buffer of items (T: what the request path hands over) flushed to a sink.

    Every `interval_s`, or as soon as `batch_rows` items wait, the flusher thread takes up to
    `batch_rows` items, calls `prepare(items)` (one record R per item, computed off the request
    path) and `store.write`s them. A failed write keeps its records for a retry after a
    backoff (0.5 s doubling to 5 s). `capacity` bounds everything held, records awaiting a retry
    and the batch being written included: beyond it the oldest rows are dropped, except those of
    the batch in flight, which cannot be taken back.

    Callbacks (called from whichever thread moved the rows; exceptions in them are logged and
    ignored): `on_written(n)`, `on_dropped(n)`, `on_depth(rows waiting)` after every flush
    attempt, and `store_up(ok)` on the first write outcome
    and on every change between success and failure.
    """

    def __init__(
        self,
        store: RecordSink[R],
        prepare: Callable[[list[T]], list[R]],
        *,
        capacity: int = 10_000,
        batch_rows: int = 500,
        interval_s: float = 1.0,
        on_written: Count = _ignore,
        on_dropped: Count = _ignore,
        store_up: Callable[[bool], None] | None = None,
        on_depth: Count = _ignore,
        backoff: Backoff | None = None,
        name: str = "mlguard-prediction-log",
    ) -> None:
        if capacity < 1 or batch_rows < 1 or interval_s <= 0:
            raise ValueError("capacity and batch_rows must be >= 1, interval_s > 0")
        self.store = store
        self.prepare = prepare
        self.capacity = capacity
        self.batch_rows = batch_rows
        self.interval_s = interval_s
        self.on_written = on_written
        self.on_dropped = on_dropped
        self.store_up = store_up
        self.on_depth = on_depth  # the rows waiting, after every flush attempt (a gauge)
        self.backoff = backoff or Backoff()
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[T] = deque()  # appended, not yet prepared
        self._retry: deque[R] = deque()  # prepared, a write failed: oldest rows
        self._in_flight = 0  # taken by the flusher, not yet written or returned
        self._appended = self._written = self._dropped = 0
        self._retry_at = 0.0  # monotonic time before which no write is tried (backoff)
        self._up: bool | None = None
        self._stopping = False
        self._stopped = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._logged: set[str] = set()

    # -- the request path ----------------------------------------------------------------

    def append(self, items: Sequence[T]) -> None:
        """Queue items for writing: O(len(items)), no I/O, never raises."""
        if not items:
            return
        with self._cond:
            self._appended += len(items)
            if self._stopped:
                dropped = len(items)  # too late to write: counted, not lost in silence
                self._dropped += dropped
            else:
                waiting = len(self._items)
                self._items.extend(items)
                dropped = self._shed()
                if waiting < self.batch_rows <= len(self._items):
                    self._cond.notify()  # a full batch waits: flush before the interval
        if dropped:
            self._emit(self.on_dropped, dropped)

    def buffer_rows(self) -> int:
        """Rows held: queued, awaiting a retry, or being written."""
        with self._cond:
            return len(self._items) + len(self._retry) + self._in_flight

    def counts(self) -> LogCounts:
        with self._cond:
            buffered = len(self._items) + len(self._retry) + self._in_flight
            return LogCounts(self._appended, self._written, self._dropped, buffered)

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher thread; the caller owns it and must call `stop`."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Flush what can be written within `timeout_s`, join the thread, and count whatever is
        left as dropped. Later appends are counted as dropped at once."""
        with self._cond:
            if self._stopped:
                return
            self._stopping = True
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify()
        if self._thread is None:  # never started: flush from here
            self._drain(final=True)
        else:
            self._thread.join(timeout_s)
        with self._cond:
            self._stopped = True
            # A write still hanging past the deadline may or may not land: count it as dropped
            # now, and the thread will not count it again (see _finish).
            left = len(self._items) + len(self._retry) + self._in_flight
            self._items.clear()
            self._retry.clear()
            self._in_flight = 0
            self._dropped += left
        if left:
            log.warning("%s stopped with %d rows unwritten: counted as dropped", self.name, left)
            self._emit(self.on_dropped, left)

    def _run(self) -> None:
        next_flush = time.monotonic() + self.interval_s
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    full = len(self._items) >= self.batch_rows
                    if (full or now >= next_flush) and now >= self._retry_at:
                        break
                    wake = max(now if full else next_flush, self._retry_at)
                    self._cond.wait(wake - now)
                if self._stopping:
                    break
            self._drain(final=False)
            self._emit(self.on_depth, self.buffer_rows())
            next_flush = time.monotonic() + self.interval_s
        self._drain(final=True)

    def _drain(self, final: bool) -> None:
        """Write what waits, a batch at a time, until a write fails (not final) or, when final,
        the buffer is empty or the stop deadline passes (retrying a failing store with its
        backoff until then). Not final, rows that arrived during a write wait for the next
        flush unless a full batch waits: a sink that takes a while (the hand-over to the
        monitoring process) would otherwise be called back to back with a few rows each time."""
        wrote = False
        while True:
            with self._cond:
                if final and time.monotonic() >= self._deadline:
                    return
                if not final and self._stopping:
                    return  # the final drain takes over, bounded by stop's deadline
                if not final and wrote and not self._retry and len(self._items) < self.batch_rows:
                    return
                if self._retry:
                    n = min(self.batch_rows, len(self._retry))
                    records = [self._retry.popleft() for _ in range(n)]
                    items: list[T] = []
                elif self._items:
                    n = min(self.batch_rows, len(self._items))
                    items = [self._items.popleft() for _ in range(n)]
                    records = []
                else:
                    return
                self._in_flight = n
            if items:
                try:
                    records = self.prepare(items)
                    if len(records) != len(items):
                        raise ValueError(f"prepare returned {len(records)} records for {n} items")
                except Exception:  # noqa: BLE001 -- counted as dropped, logged once
                    self._once("prepare", "prepare failed; its rows are dropped", exc_info=True)
                    self._finish(n, written=False)
                    continue
            try:
                self.store.write(records)
            except Exception as exc:  # noqa: BLE001 -- any store failure: keep the rows, retry
                delay = self._failed(records, exc)
                if not final:
                    return
                time.sleep(max(0.0, min(delay, self._deadline - time.monotonic())))
            else:
                self._finish(n, written=True)
                wrote = True

    def _finish(self, n: int, written: bool) -> None:
        """Account for a batch the flusher took: written, or dropped (prepare failed)."""
        with self._cond:
            if self._stopped:
                return  # stop() gave up waiting and already counted these rows as dropped
            self._in_flight = 0
            if written:
                self._written += n
                self.backoff.succeeded()
                self._retry_at = 0.0
            else:
                self._dropped += n
            was_up = self._up
            if written:
                self._up = True
        self._emit(self.on_written if written else self.on_dropped, n)
        if written and was_up is not True:
            if was_up is False:
                log.warning("%s: store writes succeed again", self.name)
            if self.store_up is not None:
                self._emit(self.store_up, True)

    def _failed(self, records: list[R], exc: Exception) -> float:
        """Put a failed batch back (oldest first) and back off; returns the delay."""
        with self._cond:
            if self._stopped:
                return 0.0
            self._in_flight = 0
            self._retry.extendleft(reversed(records))
            dropped = self._shed()
            delay = self.backoff.failed()
            self._retry_at = time.monotonic() + delay
            changed = self._up is not False
            self._up = False
        if dropped:
            self._emit(self.on_dropped, dropped)
        if changed:
            log.warning("%s: store write failed, retrying with backoff: %s", self.name, exc)
            if self.store_up is not None:
                self._emit(self.store_up, False)
        return delay

    # -- helpers -------------------------------------------------------------------------

    def _shed(self) -> int:
        """Drop the oldest rows beyond capacity (call with the lock held); returns how many."""
        over = len(self._items) + len(self._retry) + self._in_flight - self.capacity
        dropped = 0
        while over > 0 and (self._retry or self._items):
            (self._retry or self._items).popleft()
            over -= 1
            dropped += 1
        self._dropped += dropped
        return dropped

    def _emit(self, callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception:  # noqa: BLE001 -- a metrics callback must not stop the log
            self._once(f"callback:{callback!r}", "a write-behind callback failed", exc_info=True)

    def _once(self, key: str, message: str, exc_info: bool = False) -> None:
        """Log a recurring failure the first time only: the counters carry the rest."""
        if key not in self._logged:
            self._logged.add(key)
            log.error("%s: %s", self.name, message, exc_info=exc_info)
