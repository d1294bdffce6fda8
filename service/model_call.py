"""Calling the model under a deadline, with bounded concurrency.

The call runs in a thread so the event loop can give up on it at the deadline. A thread cannot be
killed, so an abandoned call keeps its concurrency slot until it really ends: when all slots are
taken, rows go to the rules at once (`model.overloaded`) instead of queueing behind slow calls.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitors import reasons

MAX_THREADS = 256  # the ceiling of model.max_concurrency


@dataclass(frozen=True)
class ModelOutcome:
    probabilities: np.ndarray | None  # None when the call failed
    failure: str | None = None  # a reason code
    detail: str | None = None
    seconds: float = 0.0


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


class DeadlineModelCall:
    def __init__(self, predict: Callable[[list[dict[str, Any]]], np.ndarray]) -> None:
        self._predict = predict
        self._limit = ConcurrencyLimit()
        self._executor = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="mlguard-model")

    async def __call__(
        self, rows: list[dict[str, Any]], timeout_s: float, max_concurrency: int
    ) -> ModelOutcome:
        if not self._limit.try_acquire(max_concurrency):
            return ModelOutcome(None, reasons.MODEL_OVERLOADED)
        started = time.perf_counter()

        def run() -> np.ndarray:
            try:
                return self._predict(rows)
            finally:
                self._limit.release()

        try:
            future = self._executor.submit(run)
        except RuntimeError:  # executor shut down: the service is stopping
            self._limit.release()
            return ModelOutcome(None, reasons.MODEL_ERROR, "shutting down")
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            return ModelOutcome(None, reasons.MODEL_TIMEOUT, None, time.perf_counter() - started)
        except Exception as exc:  # any model failure is a routing reason, never a 5xx
            return ModelOutcome(
                None, reasons.MODEL_ERROR, type(exc).__name__, time.perf_counter() - started
            )
        return ModelOutcome(
            np.asarray(result, dtype=float).reshape(-1), seconds=time.perf_counter() - started
        )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
