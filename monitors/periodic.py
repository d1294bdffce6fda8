"""Periodic work that must outlive its own bugs: one helper for every background loop.

`PeriodicThread` runs a function every `interval()` seconds in a daemon thread (the config
watcher, the drift checker, the model loader); `periodic_task` does the same as a task on a
running event loop (the drift feed, whose BentoML client is bound to the worker's loop). The
interval is read before every wait, so a reloaded setting applies to the next one. A tick that
raises is logged and the loop goes on.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

log = logging.getLogger("mlguard.periodic")


class PeriodicThread:
    """The owner calls start() once and stop() once; stop() waits for the thread to end."""

    def __init__(self, name: str, tick: Callable[[], object], interval: Callable[[], float]) -> None:
        self.name = name
        self._tick = tick
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():  # a tick may stop it
            thread.join(timeout=timeout_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval()):
            try:
                self._tick()
            except Exception:  # the loop must never die silently
                log.exception("%s failed; retrying", self.name)


def periodic_task(
    name: str, tick: Callable[[], Awaitable[object]], interval: Callable[[], float]
) -> asyncio.Task:
    """Start `tick` every `interval()` seconds on the running loop; cancel the task to stop it."""

    async def run() -> None:
        while True:
            await asyncio.sleep(interval())
            try:
                await tick()
            except Exception:  # serving never waits on it, and it must outlive any bug
                log.exception("%s failed; retrying", name)

    return asyncio.get_running_loop().create_task(run(), name=name)
