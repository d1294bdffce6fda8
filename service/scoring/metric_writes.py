"""A request's metric value updates, written together: one lock and one fork check for all.

In multiprocess mode (every BentoML worker), each prometheus_client value update takes the
module's lock, asks the kernel for the process id (its fork check: a system call) and writes the
mmap file. A one-row answer makes eight updates (requests, decisions, and the sum and a bucket of
three histograms): ~0.7 µs each here, against ~0.2 for an update without the lock and the system
call (docs/BENCHMARKS.md, round 9). `write` takes the lock and checks the process once for all of
a request's updates, then writes each value as its `inc()` does.

This reaches into prometheus_client's internals (pinned in constraints.txt), checked once per
value class: if a release renames any of them, or metrics are single-process (`MutexValue`), every
update goes through the public `inc()`: the same counts, only slower (tested).
"""
from __future__ import annotations

from typing import Any

Update = tuple[Any, float]  # (a metric's value object, the amount to add)

_PID_CHECK = "_MmapedValue__check_for_pid_change"  # name-mangled private method
_locks: dict[type, Any] = {}  # value class -> the lock its values share, or None: public inc() only


def _shared_lock(value: Any) -> Any:
    """The lock every `MmapedValue` of the process shares, from its `inc`'s closure; or None."""
    inc = getattr(type(value), "inc", None)
    code = getattr(inc, "__code__", None)
    if not getattr(value, "_multiprocess", False) or code is None or "lock" not in code.co_freevars:
        return None
    if not all(hasattr(value, name) for name in ("_file", "_key", "_value", "_timestamp", _PID_CHECK)):
        return None
    if not hasattr(value._file, "write_value"):
        return None
    return inc.__closure__[code.co_freevars.index("lock")].cell_contents


def write(updates: list[Update]) -> None:
    """Add each amount to its value, as `value.inc(amount)` would, in order."""
    if not updates:
        return
    kind = type(updates[0][0])
    if kind not in _locks:
        _locks[kind] = _shared_lock(updates[0][0])
    lock = _locks[kind]
    for value, _ in updates:
        if type(value) is not kind:
            lock = None  # values of two classes: no one lock covers them
            break
    if lock is None:
        for value, amount in updates:
            value.inc(amount)
        return
    with lock:
        getattr(updates[0][0], _PID_CHECK)()  # after a fork this re-binds every value to our files
        for value, amount in updates:
            value._value += amount
            value._timestamp = 0.0
            value._file.write_value(value._key, value._value, 0.0)
