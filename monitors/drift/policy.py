"""The drift policy: hysteresis between "clear" and "drifted", in the shape of pybreaker.

The policy delegates to small state objects; each knows only its own transition and its own
streak counter. `enter_after` consecutive drifted checks move clear -> drifted, `exit_after`
consecutive clean checks move drifted -> clear. A failed check (exception, dead process) follows
`on_error`: keep the current state, or clear it so the model answers again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

OnError = Literal["keep", "clear"]


@dataclass(frozen=True)
class Hysteresis:
    enter_after: int
    exit_after: int
    on_error: OnError


class _State:
    name = ""
    drifted = False

    def __init__(self, policy: DriftPolicy) -> None:
        self.policy = policy
        self.streak = 0  # consecutive checks pointing to the other state

    def on_check(self, dataset_drift: bool) -> None:
        raise NotImplementedError


class ClearState(_State):
    name = "clear"

    def on_check(self, dataset_drift: bool) -> None:
        self.streak = self.streak + 1 if dataset_drift else 0
        if self.streak >= self.policy.rules().enter_after:
            self.policy.move_to(DriftedState)


class DriftedState(_State):
    name = "drifted"
    drifted = True

    def on_check(self, dataset_drift: bool) -> None:
        self.streak = 0 if dataset_drift else self.streak + 1
        if self.streak >= self.policy.rules().exit_after:
            self.policy.move_to(ClearState)


class DriftPolicy:
    """`rules` is read at every check, so reloaded thresholds apply to the next one."""

    def __init__(self, rules: Callable[[], Hysteresis]) -> None:
        self.rules = rules
        self.state: _State = ClearState(self)
        self._listeners: list[Callable[[str, str], None]] = []

    @property
    def drifted(self) -> bool:
        return self.state.drifted

    def on_transition(self, listener: Callable[[str, str], None]) -> None:
        self._listeners.append(listener)

    def move_to(self, state_cls: type[_State]) -> None:
        old, self.state = self.state, state_cls(self)
        for listener in self._listeners:
            listener(old.name, self.state.name)

    def record_check(self, dataset_drift: bool) -> None:
        self.state.on_check(dataset_drift)

    def record_error(self) -> None:
        if self.rules().on_error == "clear" and self.state.drifted:
            self.move_to(ClearState)
