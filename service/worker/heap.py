"""The worker's garbage collector, set for serving: a frozen start-up heap, fewer young passes.

Measured under load at 16 connections (docs/BENCHMARKS.md): with CPython's defaults a worker
holding ~470k objects after start-up (BentoML, Starlette, pydantic, the model) ran a full
collection every few seconds, ~200 ms each with the event loop stopped, and ~1,400 young
collections in 25 s. Every request allocates a few hundred objects; those still alive at a young
collection (the rows the prediction log and drift feed hold for a flush) are promoted and feed
the full collections. Two standard remedies:

- `gc.freeze()` once start-up is done: what start-up built lives as long as the process, so the
  collector stops walking it on every full collection;
- a larger young-generation threshold: a request's objects die before a young collection sees
  them, so fewer are promoted at all. Cycles are still collected, later.
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations net of frees between young collections (CPython: 700)
OLDER_THRESHOLDS = (10, 10)  # CPython's


def settle() -> None:
    """Freeze what start-up built and raise the young threshold; call once per worker, when it
    is about to serve."""
    gc.collect()  # garbage from start-up is freed, not frozen
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
