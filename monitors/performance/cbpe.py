"""Performance without labels, for binary models: confidence-based performance estimation (CBPE).

NannyML's idea, in a few lines of numpy. If the model's probabilities, once calibrated, are the
true chances of the positive class, then each row's outcome is a coin with that chance, and the
expected value of a metric over the window follows from the probabilities alone:
- accuracy: a row decided positive is right with chance c, one decided negative with 1 - c;
- ROC AUC: a pair (i, j) is a (positive, negative) pair with chance c_i (1 - c_j), ranked right
  when the model's score s_i > s_j (ties half): expected concordant pairs over expected pairs.

The assumption is no concept drift: P(outcome | score) is what it was on the data the calibration
was fitted on (the validation split or the guard's holdout). Under covariate shift, where the
inputs move but that relation holds, the estimate follows the shift; under concept drift it is
blind, which is what the paired delta on real labels (paired.py) is for.

The calibration is isotonic regression (pool adjacent violators), stored as plain lists of knots
in the guard card and applied by linear interpolation between them, as scikit-learn's
`IsotonicRegression(out_of_bounds="clip")` predicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

METHOD = "isotonic"


def _pool_adjacent_violators(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing least-squares fit of y on x, as knots: each constant block keeps its
    first and last distinct x, so interpolating between knots reproduces the step fit."""
    ux, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=y)
    blocks: list[list[float]] = []  # [mean, weight, first level, last level]
    for level in range(len(ux)):
        mean, weight, first = sums[level] / counts[level], float(counts[level]), level
        while blocks and blocks[-1][0] >= mean:  # a violation (or a tie): pool with the previous
            prev_mean, prev_weight, first, _ = blocks.pop()
            mean = (prev_mean * prev_weight + mean * weight) / (prev_weight + weight)
            weight += prev_weight
        blocks.append([mean, weight, first, level])
    knots_x: list[float] = []
    knots_y: list[float] = []
    for mean, _, first, last in blocks:
        for level in dict.fromkeys((first, last)):  # one knot when the block has one level
            knots_x.append(float(ux[level]))
            knots_y.append(float(mean))
    return np.array(knots_x), np.array(knots_y)


@dataclass(frozen=True)
class Calibration:
    """From the model's probability of the positive class to the observed frequency of that class
    at such probabilities: knots (x, y), non-decreasing, fitted on labelled held-out rows."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    rows: int  # how many labelled rows it was fitted on

    @classmethod
    def fit(cls, probabilities: np.ndarray, labels: np.ndarray) -> Calibration:
        """Isotonic fit of `labels` (1 positive, 0 negative) on `probabilities`; ValueError when
        there is nothing to fit."""
        p = np.asarray(probabilities, dtype=float)
        t = np.asarray(labels, dtype=float)
        if p.ndim != 1 or p.shape != t.shape or len(p) < 2:
            raise ValueError(f"calibration needs two or more (probability, label) pairs, got {p.shape}, {t.shape}")
        if not np.isin(t, (0.0, 1.0)).all() or not np.isfinite(p).all():
            raise ValueError("calibration needs finite probabilities and labels of 0 or 1")
        x, y = _pool_adjacent_violators(p, t)
        return cls(tuple(x.tolist()), tuple(y.tolist()), len(p))

    def calibrate(self, p: np.ndarray) -> np.ndarray:
        """The calibrated probabilities; outside the fitted range, the nearest end's value."""
        return np.interp(np.asarray(p, dtype=float), self.x, self.y)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for the guard card."""
        return {"method": METHOD, "x": list(self.x), "y": list(self.y), "rows": self.rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        if data.get("method") != METHOD:
            raise ValueError(f"calibration method {data.get('method')!r}, this mlguard reads {METHOD!r}")
        x, y = tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"])
        if not x or len(x) != len(y) or any(b < a for a, b in pairwise(x)):
            raise ValueError("calibration knots must be non-empty, of one length, x increasing")
        return cls(x, y, int(data["rows"]))


def expected_auc(scores: np.ndarray, chances: np.ndarray) -> float | None:
    """Expected ROC AUC of `scores` when row i is positive with chance `chances[i]`, rows
    independent: sum over pairs i != j of c_i (1 - c_j) (1[s_i > s_j] + 1[s_i = s_j] / 2),
    over sum over pairs i != j of c_i (1 - c_j). O(n log n): rows grouped by distinct score, in
    increasing order, with cumulative sums of the negatives' chances. None when no pair can be
    a (positive, negative) pair."""
    _, level = np.unique(scores, return_inverse=True)
    pos = np.bincount(level, weights=chances)
    neg = np.bincount(level, weights=1.0 - chances)
    self_pairs = float(np.sum(chances * (1.0 - chances)))  # i = j: a row is not a pair with itself
    concordant = float(np.sum(pos * (np.cumsum(neg) - 0.5 * neg))) - 0.5 * self_pairs
    pairs = float(pos.sum() * neg.sum()) - self_pairs
    return concordant / pairs if pairs > 0 else None


def estimate(probabilities: np.ndarray, threshold: float, calibration: Calibration) -> dict[str, float | None]:
    """Estimated accuracy (at `threshold`, decided on the model's own probability as the service
    decides) and ROC AUC of a window of the model's probabilities of the positive class; None
    for both on an empty window."""
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"probabilities must be 1-D, got {p.shape}")
    if not len(p):
        return {"accuracy": None, "roc_auc": None}
    c = calibration.calibrate(p)
    return {
        "accuracy": float(np.mean(np.where(p >= threshold, c, 1.0 - c))),
        "roc_auc": expected_auc(p, c),
    }
