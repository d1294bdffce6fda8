"""Fault drills: inject model errors, delays, invalid outputs and rule failures on purpose.

Read from the config snapshot on every call, so a drill starts and stops with a config reload.
Faults are injected inside the guarded calls, so they travel the same paths a real failure would.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fallbacks.base import HeuristicResult
from service.worker.config import Settings


class InjectedFault(RuntimeError):
    """Raised by a fault drill; never by real code."""


class FaultyModel:
    """Calls a model's predict with the configured drills."""

    def __init__(
        self, settings: Callable[[], Settings], chance: Callable[[], float] = random.random
    ) -> None:
        self._settings = settings
        self._chance = chance

    def __call__(
        self, predict: Callable[[list[dict[str, Any]]], np.ndarray], rows: list[dict[str, Any]]
    ) -> np.ndarray:
        f = self._settings().faults
        if f.model_delay_ms and f.model_delay_ratio and self._chance() < f.model_delay_ratio:
            time.sleep(f.model_delay_ms / 1000.0)
        if f.model_error_ratio and self._chance() < f.model_error_ratio:
            raise InjectedFault("fault drill: model error")
        result = predict(rows)
        if f.model_invalid_output_ratio and self._chance() < f.model_invalid_output_ratio:
            return np.full_like(np.asarray(result, dtype=float), np.nan)
        return result


class FaultyHeuristic:
    """Wraps a heuristic with the configured rule-failure drill."""

    def __init__(
        self,
        heuristic: Any,
        settings: Callable[[], Settings],
        chance: Callable[[], float] = random.random,
    ) -> None:
        self._heuristic = heuristic
        self.name = heuristic.name
        self._settings = settings
        self._chance = chance

    def score(self, row: Mapping[str, Any]) -> HeuristicResult:
        ratio = self._settings().faults.heuristic_error_ratio
        if ratio and self._chance() < ratio:
            raise InjectedFault("fault drill: heuristic error")
        return self._heuristic.score(row)
