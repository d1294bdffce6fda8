"""The worker's interpreter, set for serving: the garbage collector and the GIL's switch interval.

An API worker is one event loop on one GIL, with a few threads beside it (the prediction log's
writer, the config watcher, model calls that are not inline). Both settings are measured under
load at 16 connections (docs/BENCHMARKS.md, rounds 4 and 5).

**The collector.** With CPython's defaults a worker holding ~470k objects after start-up
(BentoML, Starlette, pydantic, the model) ran a full collection every few seconds, ~200 ms each
with the event loop stopped, and ~1,400 young collections in 25 s. Every request allocates a few
hundred objects; those still alive at a young collection (the rows the prediction log and drift
feed hold for a flush) are promoted and feed the full collections. Two standard remedies:

- `gc.freeze()` once start-up is done: what start-up built lives as long as the process, so the
  collector stops walking it on every full collection;
- a larger young-generation threshold: a request's objects die before a young collection sees
  them, so fewer are promoted at all. Cycles are still collected, later.

The price of freezing: the model loaded at start-up is frozen with the rest, so after a swap
its objects that sit in reference cycles are never collected (those that do not are freed by
their reference counts, as always). That is bounded: at most one model's cycles, once per
worker. Unfreezing at a swap would instead hand the ~470k frozen objects back to the collector,
and with them the full collections above.

**The switch interval.** A thread that wants the GIL while the busy loop holds it waits up to the
switch interval (CPython: 5 ms) before it may ask for it, and meanwhile is woken, and goes back to
sleep, every time the loop lets go of the GIL for a system call: thousands of times a second.
The prediction log's writer thread, whose work is ~18 us a row, used ~50 us of CPU a request
and the loop slowed beside it: the log cost ~15% of a fast model's throughput at concurrency 16.
At 0.5 ms a waiting thread gets its turn ten times sooner, and the log's cost fell to ~7%.
Shorter intervals cut the writer's CPU further but made p99 worse. The interval matters only
while two threads want the GIL at once: a loop alone is never asked to switch.
"""
from __future__ import annotations

import gc
import sys

YOUNG_THRESHOLD = 10_000  # allocations net of frees between young collections (CPython: 700)
OLDER_THRESHOLDS = (10, 10)  # CPython's
SWITCH_INTERVAL_S = 0.0005  # CPython: 0.005


def settle() -> None:
    """Freeze what start-up built, raise the young threshold and shorten the switch interval;
    call once per worker, when it is about to serve."""
    gc.collect()  # garbage from start-up is freed, not frozen
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
