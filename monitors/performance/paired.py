"""The live yardstick: is the model still better than the rules, on the same labelled rows?

Both scorers answered the same rows (the rules run in the model's shadow), so the comparison is
paired: the bootstrap resamples row indices and scores the model and the rules on the *same*
resample, which cancels the rows' shared difficulty and gives a much narrower interval than two
independent intervals would. Percentile interval; deterministic given the seed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from monitors.performance.realized import (
    DEFAULT_METRIC,
    FUNCTIONS,
    LOWER_IS_BETTER,
    check_metric,
    or_none,
    prepare,
)

METHOD = "paired_bootstrap_percentile"
RESAMPLES = 1000
SEED = 20240611
# Resamples are drawn in chunks of at most this many indices (~8 MB of int32), so a long window
# does not allocate B x n at once.
CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class PairedDelta:
    """Model minus rules on one metric, on a higher-is-better basis: positive means the model is
    better. For lower-is-better metrics (brier, mae, rmse) it is rules minus model.

    `estimate`, `low` and `high` are None when the metric is undefined on the rows (e.g. ROC AUC
    on rows of one class).
    """

    metric: str
    estimate: float | None
    low: float | None
    high: float | None
    n: int  # labelled rows compared
    confidence: float
    method: str  # METHOD
    resamples: int  # bootstrap resamples drawn on which the metric was defined
    model: float | None  # the model's realized metric on the rows
    rules: float | None  # the rules' realized metric on the same rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _signed(metric: str, model: np.ndarray, rules: np.ndarray) -> np.ndarray:
    return rules - model if metric in LOWER_IS_BETTER else model - rules


def paired_delta(
    kind: str,
    metric: str | None,
    y: np.ndarray,
    model_scores: np.ndarray,
    rules_scores: np.ndarray,
    threshold: float = 0.5,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedDelta:
    """Model minus rules (positive: the model is better; for brier, mae and rmse: rules minus
    model) on `metric` (None: DEFAULT_METRIC[kind]: roc_auc, accuracy, mae), with a
    `confidence` paired-bootstrap percentile interval over `resamples` resamples of the rows.

    Inputs as in realized.py: `y` the outcomes; `model_scores` and `rules_scores` each scorer's
    answers on the same rows (binary: probability of the positive class, decided at `threshold`;
    multiclass: decided class; regression: value). Raises ValueError on a wrong kind, metric or
    shape.
    """
    metric = metric or DEFAULT_METRIC.get(kind, "")
    check_metric(kind, metric)
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"confidence in (0, 1) and resamples >= 1, got {confidence}, {resamples}")
    fn = FUNCTIONS[kind][metric]
    y_, m_, r_ = prepare(kind, y, model_scores, rules_scores)
    n = len(y_)
    whole = np.arange(n)[None, :]
    model, rules = fn(y_, m_, whole, threshold)[0], fn(y_, r_, whole, threshold)[0]
    point = _signed(metric, model, rules)
    if np.isnan(point):
        return PairedDelta(metric, None, None, None, n, confidence, METHOD, 0, or_none(model), or_none(rules))
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // n)
    deltas = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n), dtype=np.int32)
        deltas.append(_signed(metric, fn(y_, m_, idx, threshold), fn(y_, r_, idx, threshold)))
    boot = np.concatenate(deltas)
    boot = boot[~np.isnan(boot)]  # e.g. a resample that drew one class only: no AUC
    if not len(boot):
        return PairedDelta(metric, float(point), None, None, n, confidence, METHOD, 0, float(model), float(rules))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return PairedDelta(
        metric, float(point), float(low), float(high), n, confidence, METHOD, len(boot),
        float(model), float(rules),
    )


def below_rules(delta: PairedDelta, n: int, min_labels: int) -> bool | None:
    """The routing question for one check: True when the model is worse than the rules with
    confidence (the interval's upper end below 0) over at least `min_labels` labelled rows; False
    when it is not; None when there is not enough evidence to judge (fewer than `min_labels` rows,
    or the metric undefined on them). The hysteresis over consecutive checks is the drift policy's
    (monitors/drift/policy.py), fed with True/False and skipping None."""
    if n < min_labels or delta.high is None:
        return None
    return delta.high < 0
