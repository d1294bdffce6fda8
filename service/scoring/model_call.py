"""Calling the model under a deadline, with bounded concurrency.

The call runs in a thread so the event loop can give up on it at the deadline. A thread cannot be
killed, so an abandoned call keeps its concurrency slot until it really ends: when all slots are
taken, rows go to the rules at once (`model.overloaded`) instead of queueing behind slow calls.
With model.micro_batching, concurrent small calls share one model call (service/scoring/micro_batch.py).
A version that has shown itself fast is called on the event loop instead (`InlinePolicy`).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from monitors import reasons
from service.scoring.micro_batch import MicroBatcher
from service.worker.config import ModelConfig

log = logging.getLogger("mlguard.model")

MAX_THREADS = 256  # the ceiling of model.max_concurrency


@dataclass(frozen=True)
class Scored:
    """What one model call returned, and the version that computed it (None when unknown).

    Slicing keeps the version, so a micro-batch's result is shared out with it."""

    version: str | None
    raw: np.ndarray

    def __getitem__(self, rows: slice) -> Scored:
        return Scored(self.version, self.raw[rows])


def as_scored(result: Any) -> Scored:
    """A predict function may return a Scored or a bare array (tests, the bare benchmark)."""
    return result if isinstance(result, Scored) else Scored(None, np.asarray(result, dtype=float))


class ModelOutcome(NamedTuple):
    """How one model call ended. A NamedTuple rather than a frozen dataclass: one is built for
    every call, and a frozen dataclass sets each field through object.__setattr__."""

    raw: np.ndarray | None  # what the model returned (task-shaped); None when the call failed
    failure: str | None = None  # a reason code
    detail: str | None = None
    seconds: float = 0.0
    version: str | None = None  # the version that computed `raw`, when the predict function says


class ConcurrencyLimit:
    """A slot counter whose limit can change between calls (hot reload), unlike a Semaphore."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0

    def try_acquire(self, limit: int) -> bool:
        with self._lock:
            if self.in_flight >= limit:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1


class InlinePolicy:
    """Decides when the model is called on the event loop itself instead of in a thread.

    A threaded call costs ~0.1-0.25 ms of hand-off (submit, wake a thread, the GIL passed back and
    forth, the result carried back to the loop): more than a linear model's whole answer
    (docs/BENCHMARKS.md). Inline, the deadline cannot cut a call short, so only a version that
    has shown itself fast runs inline. Each call's wall time (so a model waiting on I/O never
    qualifies) moves a score: +1 within the limit, -promote_after/4 over it (a machine that
    preempts the worker now and then must not demote a fast model; a slow one loses its place
    within a few calls), and straight to 0 over ten times the limit. The version runs inline while
    the score is at least `promote_after` (at most twice that is kept). A limit of 0
    (`model.inline_max_ms: 0`, and always during a fault drill, whose delays would block the
    loop) keeps every call threaded and resets the score; so does a new version. Calls of more
    than `max_rows` rows always run in a thread.
    """

    def __init__(
        self,
        limit_ms: Callable[[], float],
        version: Callable[[], str | None],
        promote_after: int = 100,
    ) -> None:
        self._limit_ms = limit_ms  # read per call: a config reload or a drill applies at once
        self.promote_after = promote_after
        self._penalty = max(1, promote_after // 4)
        self._current = version  # the version the next call will use
        self._version: str | None = None  # the version the score below belongs to
        self._score = 0

    @property
    def inline(self) -> bool:
        """Whether the version in force is called inline now (GET /admin/state shows it)."""
        return (
            self._score >= self.promote_after
            and self._limit_ms() > 0
            and self._current() == self._version
        )

    def allows(self, rows: int, max_rows: int) -> bool:
        """True when a call of `rows` rows may run inline now."""
        return rows <= max_rows and self.inline

    def observe(self, version: str | None, seconds: float) -> None:
        """Hears how long a call took (from any thread: a count off by one does no harm)."""
        if version != self._version:
            self._version, self._score = version, 0
        was_inline = self._score >= self.promote_after
        limit_ms, ms = self._limit_ms(), seconds * 1000.0
        if limit_ms <= 0:  # switched off, or a drill: qualify again afterwards
            self._score = 0
        elif ms <= limit_ms:
            self._score = min(self._score + 1, 2 * self.promote_after)
        elif ms <= 10 * limit_ms:
            self._score = max(self._score - self._penalty, 0)
        else:
            self._score = 0
        inline = self._score >= self.promote_after
        if inline and not was_inline:
            log.info("model %s answers within model.inline_max_ms: called on the event loop", version)
        elif was_inline and not inline and limit_ms > 0:
            log.warning("model %s took %.2f ms, over model.inline_max_ms (%g): back to threads",
                        version, ms, limit_ms)


class Overloaded(RuntimeError):
    """Every concurrency slot was taken: a micro-batch could not start."""


class WrongAnswerCount(ValueError):
    """A micro-batch's model call answered another number of rows than it was given: shared out
    by position, each caller would get some other caller's answers."""


class DeadlineModelCall:
    def __init__(
        self,
        predict: Callable[[list[dict[str, Any]]], np.ndarray],
        batching: Callable[[], ModelConfig] | None = None,  # the model section in force
        inline: InlinePolicy | None = None,  # None: every call in a thread
    ) -> None:
        self._predict = predict
        self._inline = inline
        self._limit = ConcurrencyLimit()
        self._executor = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="mlguard-model")
        self._batching = batching
        # A batch that could not start is not retried request by request: nothing would start.
        self.batcher = MicroBatcher(self._run_batch, isolate=lambda exc: not isinstance(exc, Overloaded))
        self._batch_concurrency = 1  # the latest caller's model.max_concurrency

    async def __call__(
        self, rows: list[dict[str, Any]], timeout_s: float, max_concurrency: int
    ) -> ModelOutcome:
        b = self._batching() if self._batching is not None else None
        max_rows = b.micro_batch_max_rows if b is not None else 0
        if self._inline is not None and self._inline.allows(len(rows), max_rows):
            return self._call_inline(rows, timeout_s)
        if b is not None and b.micro_batching and len(rows) < b.micro_batch_max_rows:
            return await self._batched(rows, timeout_s, max_concurrency, b)
        if not self._limit.try_acquire(max_concurrency):
            return ModelOutcome(None, reasons.MODEL_OVERLOADED)
        try:
            future = self._submit(rows)
        except RuntimeError:  # executor shut down: the service is stopping
            return ModelOutcome(None, reasons.MODEL_ERROR, "shutting down")
        return await self._outcome(asyncio.wrap_future(future), timeout_s)

    def _submit(self, rows: list[dict[str, Any]]) -> Future[Scored]:
        """The call in a model thread, holding the slot its caller took until the call is done:
        answered, failed, or cancelled before a thread ever ran it (its deadline passed while it
        queued; a slot released only by the call itself would then never be)."""
        try:
            future = self._executor.submit(self._timed, rows)
        except RuntimeError:
            self._limit.release()
            raise
        future.add_done_callback(lambda _: self._limit.release())
        return future

    def _timed(self, rows: list[dict[str, Any]]) -> Scored:
        """One model call, its wall time told to the inline policy."""
        started = time.perf_counter()
        result = as_scored(self._predict(rows))
        if self._inline is not None:
            self._inline.observe(result.version, time.perf_counter() - started)
        return result

    def _call_inline(self, rows: list[dict[str, Any]], timeout_s: float) -> ModelOutcome:
        """The same outcomes as a threaded call; an answer later than the deadline is not used."""
        started = time.perf_counter()
        try:
            result = self._timed(rows)
        except Exception as exc:  # noqa: BLE001 -- any model failure is a routing reason, never a 5xx
            return ModelOutcome(
                None, reasons.MODEL_ERROR, type(exc).__name__, time.perf_counter() - started
            )
        seconds = time.perf_counter() - started
        if seconds > timeout_s:
            return ModelOutcome(None, reasons.MODEL_TIMEOUT, None, seconds)
        return ModelOutcome(result.raw, seconds=seconds, version=result.version)

    async def _batched(
        self, rows: list[dict[str, Any]], timeout_s: float, max_concurrency: int, b: ModelConfig
    ) -> ModelOutcome:
        """The same outcomes as an unbatched call; the deadline covers waiting for the batch too."""
        self._batch_concurrency = max_concurrency
        submitted = self.batcher.submit(rows, b.micro_batch_max_rows, b.micro_batch_max_wait_ms / 1000.0)
        return await self._outcome(submitted, timeout_s)

    @staticmethod
    async def _outcome(call: Awaitable[Scored], timeout_s: float) -> ModelOutcome:
        """A model call awaited under its deadline: every failure becomes a routing reason."""
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(call, timeout_s)
        except Overloaded:  # a micro-batch could not start: it never ran
            return ModelOutcome(None, reasons.MODEL_OVERLOADED)
        except WrongAnswerCount as exc:  # as an unbatched call's wrong count is judged
            return ModelOutcome(None, reasons.OUTPUT_INVALID, str(exc), time.perf_counter() - started)
        except TimeoutError:
            return ModelOutcome(None, reasons.MODEL_TIMEOUT, None, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 -- any model failure is a routing reason, never a 5xx
            return ModelOutcome(
                None, reasons.MODEL_ERROR, type(exc).__name__, time.perf_counter() - started
            )
        return ModelOutcome(result.raw, seconds=time.perf_counter() - started, version=result.version)

    async def _run_batch(self, rows: list[dict[str, Any]]) -> Scored:
        """One model call for a whole micro-batch: one concurrency slot, no deadline of its own."""
        if not self._limit.try_acquire(self._batch_concurrency):
            raise Overloaded()
        result = await asyncio.wrap_future(self._submit(rows))
        answers = result.raw.shape[0] if result.raw.ndim else 0
        if answers != len(rows):
            raise WrongAnswerCount(f"{answers} answers for {len(rows)} rows")
        return result

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
