"""Which model version the drift process follows: the one its API workers serve.

Each worker names the version it serves with every flush of rows (about once a second). While a
swap spreads, or when a swap was refused on some workers and not on others, they disagree.
Following the latest report would load the other version's reference at every flush and
restart the window each time: drift would never be judged. So the version followed stays while
any worker still reports it, and the process moves on only when none has for `ttl_s` (every
worker swapped or rolled back).
"""
from __future__ import annotations

import time
from collections.abc import Callable

REPORT_TTL_S = 5.0  # several flushes: a worker that still serves a version reports it by then


class ServedVersions:
    """Thread-safe enough for its use: `report` from the ingest calls, `follow` from the loader
    thread (single dict operations under the GIL)."""

    def __init__(self, ttl_s: float = REPORT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._seen: dict[str, float] = {}  # version -> when a worker last reported it

    def report(self, version: str) -> None:
        self._seen[version] = self._clock()

    def follow(self, current: str | None) -> str | None:
        """The version to follow: `current` while a worker still reports it, else the one
        reported last; None when no worker has reported for `ttl_s`."""
        now = self._clock()
        live = {v: t for v, t in list(self._seen.items()) if now - t <= self._ttl_s}
        for version in set(self._seen) - set(live):
            self._seen.pop(version, None)
        if current is not None and current in live:
            return current
        return max(live, key=live.__getitem__) if live else None
