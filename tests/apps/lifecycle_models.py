"""Model-protocol objects for the model lifecycle tests (tests/test_model_lifecycle.py).

Saved with `bentoml.picklable_model` through `training.guard.guard_model` and loaded by a real
server, so they live in an importable module (the server runs with the checkout on PYTHONPATH).

- `ScikitBinary`: a fitted scikit-learn classifier behind the `Model` protocol (the good versions).
- `BreaksAfterLoad`: answers like the classifier it wraps, passes the guard's warm-up at load, and
  answers NaN once it has been loaded for `healthy_s` seconds: a version with deliberately broken
  outputs, caught only live. The clock starts when a server unpickles it, never in the process
  that guards and saves it (whose yardstick must see the healthy model); optionally only in the
  first process that loads it.
- `ConstantProbability`: the same probability for every row: valid outputs, no skill, so its
  yardstick does not beat the rules (refused by the promotion gate).
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from monitors.features import FeatureSchema


class ScikitBinary:
    """A scikit-learn classifier fitted on `schema.matrix` rows; answers P(positive)."""

    def __init__(self, estimator: Any, schema: FeatureSchema, positive: str) -> None:
        self.estimator = estimator
        self.schema = schema
        self.column = [str(c) for c in estimator.classes_].index(positive)

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        return self.estimator.predict_proba(self.schema.matrix(rows))[:, self.column]


class BreaksAfterLoad:
    """`inner`'s answers for `healthy_s` seconds after it is loaded (unpickled), then NaN.

    With `claim` (a file path), only the first process to load it breaks (it creates the file):
    in a two-worker server one worker sees the failures and rolls back, the other must follow.
    """

    def __init__(self, inner: Any, healthy_s: float, claim: str | None = None) -> None:
        self.inner = inner
        self.healthy_s = healthy_s
        self.claim = claim
        self._breaks_at: float | None = None  # None: never (the original object, or not claimed)

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "healthy_s": self.healthy_s, "claim": self.claim}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)
        if self.claim is not None:
            try:
                os.close(os.open(self.claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return  # another process breaks
        self._breaks_at = time.monotonic() + self.healthy_s

    def broken(self) -> bool:
        return self._breaks_at is not None and time.monotonic() > self._breaks_at

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        if self.broken():
            return np.full(len(rows), np.nan)
        return self.inner.predict_rows(rows)


class ConstantProbability:
    """The same probability of the positive class for every row."""

    def __init__(self, probability: float) -> None:
        self.probability = probability

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        return np.full(len(rows), self.probability)
