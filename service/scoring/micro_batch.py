"""Micro-batching: concurrent small model calls in one worker coalesced into one model call.

One `predict_proba` of the reference model costs about the same for 1 row as for 50 (its fixed
cost is the per-tree Python loop), so under concurrent load one call for many waiting requests
saves nearly all the model time. Routing stays per row (only rows the router sent to the model
come here) and each caller keeps its own deadline: a caller that gives up is dropped from the
batch if it has not started, and its answer is discarded if it has.

When to run a batch: at once when no batch is running (an idle worker adds no wait, so a lone
request is as fast as without batching); otherwise when the running batch ends, when max_rows are
waiting, or when the oldest waiting row has waited max_wait (so a slow batch does not hold up the
next one for longer than that).

A batch of several requests whose model call raised is tried again request by request, so rows
that break the model fail their own request only; the others are answered (a model that fails
on everything fails each request, at the cost of one more call per request of that batch).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Rows = list[dict[str, Any]]
# Starts one model call on all rows and returns its answers, sliceable by row; raises (e.g.
# overloaded) if it cannot start, or when the answers are not one per row.
RunBatch = Callable[[Rows], Awaitable[Any]]


@dataclass
class _Waiter:
    rows: Rows
    future: asyncio.Future


class MicroBatcher:
    """Lives on one event loop (the worker's); not thread-safe, and needs none."""

    def __init__(self, run_batch: RunBatch, isolate: Callable[[Exception], bool] = lambda exc: True) -> None:
        """`isolate(exc)`: whether a batch of several requests that failed with `exc` is run
        again request by request, so one request's rows that break the model fail that
        request only (not, e.g., when the call could not start at all)."""
        self._run_batch = run_batch
        self._isolate = isolate
        self._waiting: list[_Waiter] = []
        self._waiting_rows = 0
        self._running = 0  # batches in flight
        self._timer: asyncio.TimerHandle | None = None
        self._max_rows = 1
        self._tasks: set[asyncio.Future] = set()
        self.batches = 0  # model calls made, for tests and the benchmark

    async def submit(self, rows: Rows, max_rows: int, max_wait_s: float) -> Any:
        """The probabilities for `rows`, computed in some batch; raises what the batch raised."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(rows, loop.create_future())
        self._waiting.append(waiter)
        self._waiting_rows += len(rows)
        self._max_rows = max_rows
        if self._running == 0 or self._waiting_rows >= max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(max_wait_s, self._flush)
        return await waiter.future  # cancelled by the caller's deadline: see _flush

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Callers whose deadline already passed are gone: their rows are not computed.
        waiting = [w for w in self._waiting if not w.future.done()]
        self._waiting, self._waiting_rows = [], 0
        while waiting:
            batch, rows = [], 0
            while waiting and (not batch or rows + len(waiting[0].rows) <= self._max_rows):
                w = waiting.pop(0)
                batch.append(w)
                rows += len(w.rows)
            self._running += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Waiter]) -> None:
        try:
            await self._answer(batch)
        finally:
            self._running -= 1
            if self._waiting:  # the rows that queued up behind this batch go next
                self._flush()

    async def _answer(self, batch: list[_Waiter]) -> None:
        self.batches += 1
        try:
            result = await self._run_batch([row for w in batch for row in w.rows])
        except Exception as exc:  # noqa: BLE001 -- every waiter learns of the failure, none hangs
            if len(batch) > 1 and self._isolate(exc):
                await asyncio.gather(*(self._answer([w]) for w in batch if not w.future.done()))
                return
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
        else:
            start = 0
            for w in batch:
                end = start + len(w.rows)
                if not w.future.done():  # a caller past its deadline has already left
                    w.future.set_result(result[start:end])
                start = end
