"""The circuit breaker: stop calling a model that keeps failing, then probe it before trusting it.

In pybreaker's shape: the breaker delegates to small state objects (closed, open, half-open), each
knowing only its own transitions; events go to listeners (metrics, logs). It decides whether a
model call may happen and is told how calls ended; it never calls the model itself.

closed    every call allowed; outcomes go into a sliding window of the last `window_size` calls;
          opens when the window holds >= `min_calls` outcomes and the failure ratio >= `failure_ratio`
open      no call allowed for `open_s` seconds, then half-open
half-open `half_open_probes` probe calls allowed, the rest refused; one failed probe reopens,
          all of them succeeding closes it (with a fresh window)

The settings are read on every call, so a config reload retunes a running breaker; disabling it
closes the circuit.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, Self

from monitors import reasons

log = logging.getLogger("mlguard.circuit")

CLOSED = "closed"
HALF_OPEN = "half_open"
OPEN = "open"
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the mlguard_circuit_state gauge's values


class CircuitSettings(Protocol):
    enabled: bool
    window_size: int
    min_calls: int
    failure_ratio: float
    open_s: float
    half_open_probes: int


class CircuitListener:
    """Receives the breaker's events; override what you need."""

    def state_change(self, old: str, new: str) -> None: ...


class _State:
    name = ""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def allow(self, cfg: CircuitSettings) -> bool:
        raise NotImplementedError

    def on_success(self, cfg: CircuitSettings) -> None: ...

    def on_failure(self, cfg: CircuitSettings) -> None: ...

    def on_skipped(self, cfg: CircuitSettings) -> None:
        """An allowed call that never ran (e.g. refused as overloaded): no verdict."""


class _Closed(_State):
    name = CLOSED

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.window: deque[bool] = deque()  # True for a failure

    def allow(self, cfg: CircuitSettings) -> bool:
        return True

    def _push(self, failed: bool, cfg: CircuitSettings) -> None:
        self.window.append(failed)
        while len(self.window) > cfg.window_size:  # the size can shrink on reload
            self.window.popleft()

    def on_success(self, cfg: CircuitSettings) -> None:
        self._push(False, cfg)

    def on_failure(self, cfg: CircuitSettings) -> None:
        self._push(True, cfg)
        calls = len(self.window)
        if calls >= cfg.min_calls and sum(self.window) / calls >= cfg.failure_ratio:
            self.breaker._move_to(_Open(self.breaker))


class _Open(_State):
    name = OPEN

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.opened_at = breaker.clock()

    def allow(self, cfg: CircuitSettings) -> bool:
        if self.breaker.clock() - self.opened_at < cfg.open_s:
            return False
        half_open = _HalfOpen(self.breaker)
        self.breaker._move_to(half_open)
        return half_open.allow(cfg)


class _HalfOpen(_State):
    name = HALF_OPEN

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker)
        self.in_flight = 0
        self.successes = 0

    def allow(self, cfg: CircuitSettings) -> bool:
        if self.in_flight + self.successes >= cfg.half_open_probes:
            return False
        self.in_flight += 1
        return True

    def on_success(self, cfg: CircuitSettings) -> None:
        self.in_flight -= 1
        self.successes += 1
        if self.successes >= cfg.half_open_probes:
            self.breaker._move_to(_Closed(self.breaker))

    def on_failure(self, cfg: CircuitSettings) -> None:
        self.breaker._move_to(_Open(self.breaker))

    def on_skipped(self, cfg: CircuitSettings) -> None:
        self.in_flight -= 1


Permit = _State  # what allow() hands out: the state that allowed the call


class GuardedCall:
    """One model call under the breaker (`with breaker.guard() as call:`).

    `refused` is True while the circuit refuses calls. Otherwise the caller reports how the call
    ended with `report(failure, healthy)`; a call that leaves the block unreported (cancelled, or
    an error in the caller) is counted as skipped, so a permit can never leak.
    """


    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._permit = breaker.allow()
        self.refused = self._permit is None
        self._reported = False

    def report(self, failure: str | None, healthy: bool) -> None:
        self._reported = True
        if failure == reasons.MODEL_OVERLOADED:  # never ran: says nothing of the model
            self._breaker.on_skipped(self._permit)
        elif healthy:
            self._breaker.on_success(self._permit)
        else:  # errors, timeouts and invalid outputs all count against the model
            self._breaker.on_failure(self._permit)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.refused and not self._reported:
            self._breaker.on_skipped(self._permit)


class CircuitBreaker:
    """Thread-safe; the state object in force does the deciding."""

    def __init__(
        self,
        settings: Callable[[], CircuitSettings],
        clock: Callable[[], float] = time.monotonic,
        listeners: list[CircuitListener] | None = None,
    ) -> None:
        self._settings = settings
        self.clock = clock
        self.listeners = list(listeners or [])
        self._lock = threading.RLock()
        self._state: _State = _Closed(self)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state.name

    def allow(self) -> Permit | None:
        """A permit to call the model now, or None while the circuit refuses calls.

        Every permit must be reported exactly once (success, failure or skipped). A report on a
        permit from an earlier state (a slow call that outlived its state) changes nothing.
        """
        cfg = self._settings()
        with self._lock:
            if not cfg.enabled:
                if self._state.name != CLOSED:
                    self._move_to(_Closed(self))
                return self._state
            return self._state if self._state.allow(cfg) else None

    def guard(self) -> GuardedCall:
        """A permit wrapped so that its outcome is always reported (see GuardedCall)."""
        return GuardedCall(self)

    def on_success(self, permit: Permit) -> None:
        self._report(permit, "on_success")

    def on_failure(self, permit: Permit) -> None:
        self._report(permit, "on_failure")

    def on_skipped(self, permit: Permit) -> None:
        self._report(permit, "on_skipped")

    def _report(self, permit: Permit, event: str) -> None:
        """The permit's state hears the event; a report on a permit from an earlier state, or
        while disabled, changes nothing. By name, not a lambda: no closure built per model call."""
        cfg = self._settings()
        with self._lock:
            if cfg.enabled and permit is self._state:
                getattr(permit, event)(cfg)

    def snapshot(self) -> dict[str, object]:
        """For the admin API: the state and, when closed, the window's failure count."""
        with self._lock:
            state = self._state
            view: dict[str, object] = {"state": state.name, "enabled": self._settings().enabled}
            if isinstance(state, _Closed):
                view["window_calls"] = len(state.window)
                view["window_failures"] = sum(state.window)
            elif isinstance(state, _Open):
                view["open_for_s"] = round(self.clock() - state.opened_at, 3)
            return view

    def reset(self) -> None:
        """Closed, with a fresh window: a new model version is judged on its own calls."""
        with self._lock:
            if self._state.name == CLOSED:
                self._state = _Closed(self)  # a fresh window; no transition to report
            else:
                self._move_to(_Closed(self))

    def _move_to(self, new: _State) -> None:
        # Called with the lock held, by the state objects themselves.
        old, self._state = self._state, new
        for listener in self.listeners:
            listener.state_change(old.name, new.name)


class CircuitMetrics(CircuitListener):
    """Publishes the state gauge and counts transitions; logs each change (it is rare)."""

    def __init__(self, state_gauge: Any, transitions: Any) -> None:
        self._state_gauge = state_gauge
        self._transitions = transitions
        for name in STATE_CODES:  # every series exists at 0, so increase() sees the first change
            transitions.labels(name)
        state_gauge.set(STATE_CODES[CLOSED])

    def state_change(self, old: str, new: str) -> None:
        self._state_gauge.set(STATE_CODES[new])
        self._transitions.labels(new).inc()
        # An opening circuit deserves attention; the other moves are routine.
        log.log(logging.WARNING if new == OPEN else logging.INFO, "circuit breaker %s -> %s", old, new)
