"""The worker's garbage-collector settings (service/worker/heap.py)."""
from __future__ import annotations

import gc
import weakref

from service.worker import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_settle_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    thresholds = gc.get_threshold()
    try:
        garbage = weakref.ref(Node())  # start-up garbage, kept alive only by its own cycle
        assert garbage() is not None
        heap.settle()
        assert garbage() is None  # collected before the freeze, not frozen with the rest
        assert gc.get_freeze_count() > 1000  # what start-up built is no longer walked
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *heap.OLDER_THRESHOLDS)
        assert gc.isenabled()  # cycles made later are still collected
        later = weakref.ref(Node())
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
