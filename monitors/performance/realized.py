"""Realized metrics: how good the answers were, once the true outcomes are known.

Inputs, per task kind (`y` the outcomes, `scores` one scorer's answers on the same rows):
- binary: `y` 1 for the positive class else 0; `scores` the probability of the positive class,
  decided positive at or above `threshold` (as the service decides);
- multiclass: `y` and `scores` class names (the outcome, the decided class);
- regression: `y` and `scores` floats (the outcome, the answered value).

Every metric is written once, vectorised over resamples: `fn(y, s, idx, threshold)` takes an
(B, m) array of row indices and returns B values, NaN where the metric is undefined. `realized`
calls it with the identity resample; the paired bootstrap (paired.py) with B resamples, so the
point estimate and the interval come from the same code. Values equal scikit-learn's
(tests/test_performance_stats.py); undefined ones (ROC AUC with one class, precision with no
positive decision, recall with no positive outcome) are None rather than 0.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]

DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "mae"}
LOWER_IS_BETTER = frozenset({"brier", "mae", "rmse"})


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (0/0 is undefined, not 0)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _mean_of(per_row: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return per_row[idx].mean(axis=1) if idx.shape[1] else np.full(idx.shape[0], np.nan)


def roc_auc(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Mann-Whitney: the share of (positive, negative) pairs ranked right, ties counting half.

    Rows are grouped by distinct score (levels, in increasing order); one bincount over
    (resample, level, outcome) counts each resample's negatives and positives per level, and each
    positive scores the negatives below its level plus half those on it: O(B x levels), no sort
    per resample.
    """
    _, level = np.unique(s, return_inverse=True)
    n_levels, b = int(level.max(initial=-1)) + 1, idx.shape[0]
    code = 2 * level.astype(np.int64) + y  # (level, outcome) as one bin
    offsets = (np.arange(b, dtype=np.int64) * 2 * n_levels)[:, None]
    counts = np.bincount((code[idx] + offsets).ravel(), minlength=b * 2 * n_levels)
    counts = counts.reshape(b, n_levels, 2)
    neg, pos = counts[:, :, 0], counts[:, :, 1]
    concordant = (pos * (np.cumsum(neg, axis=1) - 0.5 * neg)).sum(axis=1)
    return _ratio(concordant, (pos.sum(axis=1) * neg.sum(axis=1)).astype(float))


def binary_accuracy(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float) -> np.ndarray:
    return _mean_of(((s >= threshold).astype(int) == y).astype(float), idx)


def brier(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return _mean_of((s - y) ** 2, idx)


def precision(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float) -> np.ndarray:
    decided = (s >= threshold)[idx]
    return _ratio((decided & (y[idx] == 1)).sum(axis=1).astype(float), decided.sum(axis=1))


def recall(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float) -> np.ndarray:
    truth = (y == 1)[idx]
    return _ratio((truth & (s >= threshold)[idx]).sum(axis=1).astype(float), truth.sum(axis=1))


def class_accuracy(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return _mean_of((y == s).astype(float), idx)


def macro_f1(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Mean over the classes present in the window (as outcome or decision) of
    2TP / (2TP + FP + FN): scikit-learn's default `labels`, and 0 for a class never decided right.
    `y` and `s` are integer class codes (see `prepare`)."""
    f1_sum = np.zeros(idx.shape[0])
    present = np.zeros(idx.shape[0])
    for k in np.union1d(y, s):
        truth, decided = (y == k)[idx], (s == k)[idx]
        tp = (truth & decided).sum(axis=1)
        wrong = (truth ^ decided).sum(axis=1)  # FP + FN
        den = 2 * tp + wrong
        f1_sum += np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)
        present += den > 0
    return _ratio(f1_sum, present)


def mae(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return _mean_of(np.abs(y - s), idx)


def rmse(y: np.ndarray, s: np.ndarray, idx: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return np.sqrt(_mean_of((y - s) ** 2, idx))


FUNCTIONS: dict[str, dict[str, Metric]] = {
    "binary": {
        "roc_auc": roc_auc,
        "accuracy": binary_accuracy,
        "brier": brier,
        "precision": precision,
        "recall": recall,
    },
    "multiclass": {"accuracy": class_accuracy, "macro_f1": macro_f1},
    "regression": {"mae": mae, "rmse": rmse},
}
METRICS: dict[str, tuple[str, ...]] = {kind: tuple(fns) for kind, fns in FUNCTIONS.items()}


def prepare(kind: str, y: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """The outcomes and each scorer's answers as the metric functions take them: binary 0/1 and
    floats, multiclass shared integer codes, regression floats. Raises ValueError on a mismatch."""
    if kind not in FUNCTIONS:
        raise ValueError(f"task kind {kind!r}, expected one of {sorted(FUNCTIONS)}")
    arrays = [np.asarray(a) for a in (y, *scores)]
    if any(a.ndim != 1 or len(a) != len(arrays[0]) for a in arrays):
        raise ValueError(f"outcomes and scores must be 1-D of one length, got {[a.shape for a in arrays]}")
    if kind == "multiclass":
        # One code book for the outcomes and every scorer, so a class means the same code in all.
        names = [a.astype(str) for a in arrays]
        _, codes = np.unique(np.concatenate(names), return_inverse=True)
        return tuple(np.split(codes, len(arrays)))
    numbers = [a.astype(float) for a in arrays]  # TypeError on None: a row without a score
    if not all(np.isfinite(a).all() for a in numbers):
        raise ValueError("outcomes and scores must be finite numbers")
    if kind == "binary":
        if not np.isin(numbers[0], (0.0, 1.0)).all():
            raise ValueError("binary outcomes must be 1 (the positive class) or 0")
        return (numbers[0].astype(int), *numbers[1:])
    return tuple(numbers)


def check_metric(kind: str, metric: str) -> None:
    if metric not in FUNCTIONS.get(kind, {}):
        raise ValueError(f"metric {metric!r} for a {kind} task, expected one of {METRICS.get(kind)}")


def or_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def realized(
    kind: str, y: np.ndarray, scores: np.ndarray, threshold: float = 0.5
) -> dict[str, float | None]:
    """Every metric of the task kind (METRICS[kind], in that order) on these labelled rows;
    None where a metric is undefined (including on no rows at all)."""
    y_, s_ = prepare(kind, y, scores)
    idx = np.arange(len(y_))[None, :]
    return {name: or_none(fn(y_, s_, idx, threshold)[0]) for name, fn in FUNCTIONS[kind].items()}
