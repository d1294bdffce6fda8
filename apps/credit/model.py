"""The reference model: a logistic scorecard, scored without scikit-learn's per-call overhead.

Every feature is cut into bins, learnt from the training rows by the kinds the request schema
declares: a numeric feature at its training quantiles (plus a bin for a missing value), a
categorical one by its training categories (plus one for a missing value and one for a category
never seen, whose weight stays 0). A logistic regression on those one-hot bins is a scorecard: one
weight per bin. Fitted with scikit-learn, then scored as the sum of one weight per feature looked
up in plain Python: one row takes a few microseconds, where the same regression through
scikit-learn's `predict_proba` takes ~0.2 ms of input validation, and the former
`ColumnTransformer` + 400 trees took ~4 ms (docs/BENCHMARKS.md, "The reference model").
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from monitors.features import FeatureSchema

# (kind, lookup, missing column, unseen column): a numeric feature's lookup is its bin edges
# (bin i is column first + i, first being the missing column's offset below), a categorical one's
# a dict from category to column.
Bins = tuple[str, Any, int, int]


class LogisticScorecard(ClassifierMixin, BaseEstimator):
    """A binary classifier on the feature matrix (`FeatureSchema.matrix`: rows in schema order,
    None or NaN for a missing value). Deterministic: lbfgs on a fixed design."""

    def __init__(self, schema: FeatureSchema, bins: int = 8, C: float = 0.3, max_iter: int = 2000) -> None:
        self.schema = schema
        self.bins = bins
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any) -> LogisticScorecard:
        X = np.asarray(X, dtype=object)
        if X.ndim != 2 or X.shape[1] != len(self.schema.features):
            raise ValueError(f"expected rows of {len(self.schema.features)} features, got shape {X.shape}")
        self.bins_, self.width_ = self._learn_bins(X)
        regression = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(self.design(X), y)
        if len(regression.classes_) != 2:
            raise ValueError(f"a scorecard is binary; the target has classes {list(regression.classes_)}")
        self.classes_ = regression.classes_
        self.weights_ = regression.coef_[0].tolist()  # log-odds of classes_[1], one per bin
        self.intercept_ = float(regression.intercept_[0])
        self.n_features_in_ = X.shape[1]
        return self

    def _learn_bins(self, X: np.ndarray) -> tuple[list[Bins], int]:
        found: list[Bins] = []
        width = 0
        for j, feature in enumerate(self.schema.features):
            column = X[:, j]
            if feature.kind == "categorical":
                categories = sorted({str(v) for v in column if _present(v)})
                lookup: Any = {c: width + 2 + i for i, c in enumerate(categories)}
                found.append(("categorical", lookup, width, width + 1))
                width += 2 + len(categories)
            else:
                values = column.astype(float)
                values = values[~np.isnan(values)]
                inner = np.linspace(0, 1, self.bins + 1)[1:-1]
                edges = np.unique(np.quantile(values, inner)).tolist() if len(values) else []
                found.append(("numeric", edges, width, -1))
                width += 1 + len(edges) + 1
        return found, width

    def design(self, X: Any) -> np.ndarray:
        """The one-hot bins the regression was fitted on: one 1 per feature and row."""
        out = np.zeros((len(X), self.width_))
        out[np.arange(len(X))[:, None], [self._columns(row) for row in X]] = 1.0
        return out

    def _columns(self, row: Sequence[Any]) -> list[int]:
        """The one bin column of each feature of one row."""
        out = []
        for value, (kind, lookup, missing, unseen) in zip(row, self.bins_):
            if not _present(value):
                out.append(missing)
            elif kind == "categorical":
                out.append(lookup.get(str(value), unseen))
            else:
                out.append(missing + 1 + bisect_right(lookup, float(value)))
        return out

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-odds of classes_[1] per row."""
        w, b = self.weights_, self.intercept_
        return np.array([b + sum(w[c] for c in self._columns(row)) for row in X], dtype=float)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities in classes_ order, one row per input row."""
        p = np.array([_sigmoid(z) for z in self.decision_function(X)], dtype=float).reshape(-1)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _sigmoid(z: float) -> float:
    # Either branch keeps exp's argument <= 0: no overflow for any log-odds.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def build_model(schema: FeatureSchema, seed: int, **params: Any) -> LogisticScorecard:
    """The reference model for `params` (bins, C, max_iter). `seed` is accepted for the training
    script's uniform call; the fit has no randomness."""
    del seed
    return LogisticScorecard(schema, **params)
