"""The circuit breaker's state machine, driven by a fake clock (no server needed)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from monitors.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitListener


@dataclass(frozen=True)
class Cfg:
    enabled: bool = True
    window_size: int = 10
    min_calls: int = 4
    failure_ratio: float = 0.5
    open_s: float = 30.0
    half_open_probes: int = 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder(CircuitListener):
    def __init__(self) -> None:
        self.moves: list[tuple[str, str]] = []

    def state_change(self, old: str, new: str) -> None:
        self.moves.append((old, new))


def make(cfg: Cfg | None = None) -> tuple[CircuitBreaker, Clock, Recorder, list[Cfg]]:
    box = [cfg or Cfg()]
    clock, rec = Clock(), Recorder()
    return CircuitBreaker(lambda: box[0], clock, [rec]), clock, rec, box


def call(cb: CircuitBreaker, ok: bool) -> bool:
    permit = cb.allow()
    if permit is None:
        return False
    (cb.on_success if ok else cb.on_failure)(permit)
    return True


def open_it(cb: CircuitBreaker) -> None:
    for _ in range(4):
        call(cb, ok=False)
    assert cb.state == OPEN


def test_stays_closed_below_min_calls_even_if_all_fail() -> None:
    cb, _, rec, _ = make()
    for _ in range(3):
        call(cb, ok=False)
    assert cb.state == CLOSED and rec.moves == []


def test_opens_when_the_failure_ratio_reaches_the_threshold() -> None:
    cb, _, rec, _ = make()
    for ok in (True, False, True):
        call(cb, ok)
    assert cb.state == CLOSED  # 1 failure in 3 calls: below min_calls anyway
    call(cb, ok=False)  # 2 of 4 = 0.5 >= 0.5
    assert cb.state == OPEN and rec.moves == [(CLOSED, OPEN)]


def test_window_slides_old_failures_out() -> None:
    cb, _, _, _ = make(Cfg(window_size=4, min_calls=4, failure_ratio=0.75))
    for ok in (False, False, True, True, True, True):
        call(cb, ok)
    call(cb, ok=False)  # window is now T T T F: 0.25
    call(cb, ok=False)  # T T F F: 0.5 < 0.75
    assert cb.state == CLOSED
    call(cb, ok=False)  # T F F F: 0.75
    assert cb.state == OPEN


def test_open_refuses_calls_until_open_s_then_half_open_probes_close_it() -> None:
    cb, clock, rec, _ = make()
    open_it(cb)
    clock.now += 29.9
    assert cb.allow() is None
    clock.now += 0.2
    first = cb.allow()
    assert first is not None and cb.state == HALF_OPEN
    second = cb.allow()
    assert second is not None
    assert cb.allow() is None  # only half_open_probes calls may probe
    cb.on_success(first)
    assert cb.state == HALF_OPEN
    cb.on_success(second)
    assert cb.state == CLOSED
    assert rec.moves == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    call(cb, ok=False)  # a fresh window: one failure does not reopen
    assert cb.state == CLOSED


def test_a_failed_probe_reopens_for_another_open_s() -> None:
    cb, clock, rec, _ = make()
    open_it(cb)
    clock.now += 31
    assert call(cb, ok=False)
    assert cb.state == OPEN
    clock.now += 29
    assert cb.allow() is None
    assert rec.moves[-2:] == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]


def test_a_skipped_probe_frees_its_slot() -> None:
    cb, clock, _, _ = make(Cfg(half_open_probes=1))
    open_it(cb)
    clock.now += 31
    permit = cb.allow()
    assert cb.allow() is None
    cb.on_skipped(permit)  # e.g. refused as overloaded: no verdict on the model
    assert cb.state == HALF_OPEN
    assert call(cb, ok=True) and cb.state == CLOSED


def test_a_report_from_an_earlier_state_changes_nothing() -> None:
    cb, clock, _, _ = make(Cfg(half_open_probes=1))
    slow = cb.allow()  # allowed while closed, outlives the state
    open_it(cb)
    clock.now += 31
    probe = cb.allow()
    cb.on_failure(slow)
    assert cb.state == HALF_OPEN
    cb.on_success(probe)
    assert cb.state == CLOSED


def test_disabling_closes_an_open_circuit_and_reload_retunes_it() -> None:
    cb, _, rec, box = make()
    open_it(cb)
    box[0] = replace(box[0], enabled=False)
    assert cb.allow() is not None and cb.state == CLOSED
    for _ in range(10):
        call(cb, ok=False)
    assert cb.state == CLOSED  # disabled: failures are not even counted
    box[0] = replace(box[0], enabled=True, min_calls=1, failure_ratio=1.0)
    call(cb, ok=False)
    assert cb.state == OPEN
    assert rec.moves == [(CLOSED, OPEN), (OPEN, CLOSED), (CLOSED, OPEN)]


def test_snapshot_describes_the_state() -> None:
    cb, clock, _, _ = make()
    call(cb, ok=False)
    assert cb.snapshot() == {"state": CLOSED, "enabled": True, "window_calls": 1, "window_failures": 1}
    open_it(cb)
    clock.now += 5
    assert cb.snapshot() == {"state": OPEN, "enabled": True, "open_for_s": 5.0}
