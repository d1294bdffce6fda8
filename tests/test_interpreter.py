"""The worker's interpreter settings (service/worker/interpreter.py)."""
from __future__ import annotations

import gc
import sys
import weakref

from service.worker import interpreter


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_settle_freezes_the_start_up_heap_raises_the_young_threshold_and_shortens_switches() -> None:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        garbage = weakref.ref(Node())  # start-up garbage, kept alive only by its own cycle
        assert garbage() is not None
        interpreter.settle()
        assert garbage() is None  # collected before the freeze, not frozen with the rest
        assert gc.get_freeze_count() > 1000  # what start-up built is no longer walked
        assert gc.get_threshold() == (interpreter.YOUNG_THRESHOLD, *interpreter.OLDER_THRESHOLDS)
        assert sys.getswitchinterval() == interpreter.SWITCH_INTERVAL_S < interval
        assert gc.isenabled()  # cycles made later are still collected
        later = weakref.ref(Node())
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
