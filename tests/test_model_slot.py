"""The model slot's swaps and rollbacks when they overlap, in-process: a load in progress, a
rollback signal for a version already replaced, the circuit opening while the slot is busy, a
retried start-up load finishing after a swap. Loading is the one part stood in for (versions
built from a predict function, with a gate the test opens), so each overlap happens in a chosen
order; the HTTP drill of the same lifecycle, with real versions in a BentoML store, is
tests/test_model_lifecycle.py."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from apps.credit.app import CREDIT_APP
from service.scoring.model_call import DeadlineModelCall
from service.scoring.pipeline import GuardedPipeline
from service.scoring.router import RoutingState
from service.worker import model_slot
from service.worker.config import ModelConfig, parse
from service.worker.model_memory import ModelMemory
from service.worker.model_slot import ModelSlot
from tests.support.data import GOOD_ROW, credit_rows
from tests.support.models import loaded_model
from tests.support.wait import wait_until

ROWS = credit_rows()
JOIN_S = 10.0  # a thread still running after this is stuck: a deadlock, not a slow machine


class Store:
    """Versions by tag; a tag listed in `gates` loads only once its gate is opened."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.loading: dict[str, threading.Event] = {}

    def gate(self, tag: str) -> threading.Event:
        self.loading[tag] = threading.Event()
        self.gates[tag] = threading.Event()
        return self.gates[tag]

    def load(self, app, tag: str, warmup_timeout_s: float, allow_worse: bool):
        if tag in self.gates:
            self.loading[tag].set()
            assert self.gates[tag].wait(JOIN_S), f"gate of {tag} never opened"
        return loaded_model(app, lambda rows: np.full(len(rows), 0.2), ROWS, version=tag)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    s = Store()
    monkeypatch.setattr(model_slot, "load_model", s.load)
    return s


@pytest.fixture
def slot(store: Store, tmp_path) -> Iterator[ModelSlot]:
    s = ModelSlot(CREDIT_APP, "m:1", lambda: ModelConfig(rollback_window_s=600), ModelMemory(tmp_path))
    assert s.load() and s.current.version == "m:1"
    yield s
    s.stop()


def swap(slot: ModelSlot, tag: str) -> threading.Thread:
    """`model.tag` edited to `tag`; returns the swap's thread (ModelSlot.request starts it)."""
    before = set(threading.enumerate())
    slot.request(tag)
    (thread,) = [t for t in threading.enumerate() if t not in before and t.name == "mlguard-model-swap"] or [None]
    return thread


def finished(thread: threading.Thread | None) -> bool:
    if thread is not None:
        thread.join(JOIN_S)
    return thread is None or not thread.is_alive()


def test_a_rollback_for_a_version_already_replaced_changes_nothing(slot: ModelSlot) -> None:
    assert finished(swap(slot, "m:2")) and slot.current.version == "m:2"
    assert finished(swap(slot, "m:3")) and slot.current.version == "m:3"
    slot.roll_back("m:2", "its failures were counted while m:3 loaded")
    assert slot.current.version == "m:3"
    assert "m:3" not in slot.memory.current.bad and not slot.rolled_back


def test_a_rollback_does_not_wait_for_a_load_in_progress(slot: ModelSlot, store: Store) -> None:
    assert finished(swap(slot, "m:2"))
    gate = store.gate("m:3")
    loading = swap(slot, "m:3")
    assert store.loading["m:3"].wait(JOIN_S)
    rollback = threading.Thread(target=slot.roll_back, args=("m:2", "failed after the swap"))
    rollback.start()
    assert finished(rollback)  # while m:3 is still loading
    assert slot.current.version == "m:1" and slot.rolled_back == {"m:2": "failed after the swap"}
    gate.set()
    assert finished(loading) and slot.current.version == "m:3"  # the edit still lands


def test_the_circuit_opening_while_the_slot_is_busy_does_not_block_the_breaker(slot: ModelSlot) -> None:
    """The breaker tells the slot while holding its own lock, and the slot resets the breaker
    while holding the slot's: circuit_opened must return without the slot's lock."""
    assert finished(swap(slot, "m:2"))
    with slot._lock:  # a swap or rollback in its critical section
        opened = threading.Thread(target=slot.circuit_opened)
        opened.start()
        assert finished(opened)
    assert wait_until(lambda: slot.current.version == "m:1", JOIN_S)
    assert slot.rolled_back == {"m:2": "its circuit opened after the swap"}


def test_a_late_start_up_load_does_not_undo_a_swap(tmp_path, store: Store) -> None:
    slot = ModelSlot(CREDIT_APP, "m:1", lambda: ModelConfig(), ModelMemory(tmp_path))
    gate = store.gate("m:1")
    first = threading.Thread(target=slot.load)  # the retry thread, loading the start-up tag
    first.start()
    assert store.loading["m:1"].wait(JOIN_S)
    assert finished(swap(slot, "m:2")) and slot.current.version == "m:2"
    gate.set()
    assert finished(first) and slot.current.version == "m:2"
    slot.stop()


def test_a_failed_call_counts_against_the_version_served(slot: ModelSlot) -> None:
    """A call that raised or timed out returns no version: the rollback watch must still count
    it, against the version the request was served by."""
    heard: list[tuple[str | None, bool]] = []

    def fail(rows):
        raise ValueError("broken version")

    served = loaded_model(CREDIT_APP, fail, ROWS, version="m:9")
    settings = parse("")
    pipeline = GuardedPipeline(
        CREDIT_APP, model_call=DeadlineModelCall(served.model.predict_rows), served=lambda: served,
        settings=lambda: settings,
        routing_state=lambda cfg: RoutingState(cfg.routing.mode, drift_active=False, model_available=True),
        observe=lambda version, healthy: heard.append((version, healthy)),
    )
    (answer,) = asyncio.run(pipeline.predict([GOOD_ROW]))
    assert answer.route == "heuristic" and heard == [("m:9", False)]
