"""Calling the model under a deadline, with bounded concurrency.

The call runs in a thread so the event loop can give up on it at the deadline. A thread cannot be
killed, so an abandoned call keeps its concurrency slot until it really ends: when all slots are
taken, rows go to the rules at once (`model.overloaded`) instead of queueing behind slow calls.
With model.micro_batching, concurrent small calls share one model call (service/scoring/micro_batch.py).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitors import reasons
from service.scoring.micro_batch import MicroBatcher
from service.worker.config import ModelConfig

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


@dataclass(frozen=True)
class ModelOutcome:
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


class Overloaded(RuntimeError):
    """Every concurrency slot was taken: a micro-batch could not start."""


class DeadlineModelCall:
    def __init__(
        self,
        predict: Callable[[list[dict[str, Any]]], np.ndarray],
        batching: Callable[[], ModelConfig] | None = None,  # the model section in force
    ) -> None:
        self._predict = predict
        self._limit = ConcurrencyLimit()
        self._executor = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="mlguard-model")
        self._batching = batching
        self.batcher = MicroBatcher(self._run_batch)
        self._batch_concurrency = 1  # the latest caller's model.max_concurrency

    async def __call__(
        self, rows: list[dict[str, Any]], timeout_s: float, max_concurrency: int
    ) -> ModelOutcome:
        b = self._batching() if self._batching is not None else None
        if b is not None and b.micro_batching and len(rows) < b.micro_batch_max_rows:
            return await self._batched(rows, timeout_s, max_concurrency, b)
        if not self._limit.try_acquire(max_concurrency):
            return ModelOutcome(None, reasons.MODEL_OVERLOADED)

        def run() -> Scored:
            try:
                return as_scored(self._predict(rows))
            finally:
                self._limit.release()

        try:
            future = self._executor.submit(run)
        except RuntimeError:  # executor shut down: the service is stopping
            self._limit.release()
            return ModelOutcome(None, reasons.MODEL_ERROR, "shutting down")
        return await self._outcome(asyncio.wrap_future(future), timeout_s)

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

        def run() -> Scored:
            try:
                return as_scored(self._predict(rows))
            finally:
                self._limit.release()

        try:
            future = self._executor.submit(run)
        except RuntimeError:
            self._limit.release()
            raise
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
