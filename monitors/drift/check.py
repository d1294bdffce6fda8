"""One drift check: Evidently's stat tests, one per column, window against the training split.

Methods (measured in docs/DRIFT.md): two-sample Kolmogorov-Smirnov for numeric columns and
chi-square for categorical ones, each drifted at p <= its threshold (0.001 by default), against
the whole training split. Column kinds come from the plug-in's schema, never guessed.

Evidently's `Report` renders a plotly widget per metric inside `run()` (0.9 s for 13 `ValueDrift`
here, under load); the periodic check calls the same registered `StatTest` objects that
`ValueDrift` resolves to, and leaves the rendered report to the on-demand page (report.py).
"""
from __future__ import annotations

import time

import pandas as pd
from evidently.legacy.calculations.stattests import chi_stat_test, ks_stat_test
from evidently.legacy.calculations.stattests.registry import StatTest
from evidently.legacy.core import ColumnType

from monitors.drift.buckets import CategoryBuckets
from monitors.drift.result import ColumnDrift, DriftResult
from monitors.features import FeatureSchema


class DriftCheck:
    def __init__(
        self,
        schema: FeatureSchema,
        reference: pd.DataFrame,
        window_size: int,
        numeric_p: float,
        categorical_p: float,
        share_threshold: float,
        reference_predictions: pd.Series | None = None,
    ) -> None:
        """`reference_predictions`: the model's predictions on the reference rows. Numbers
        (probabilities, values) are tested with KS, classes with chi-square."""
        self.schema = schema
        self.numeric_p = numeric_p
        self.categorical_p = categorical_p
        self.share_threshold = share_threshold
        self.buckets = {c: CategoryBuckets(reference[c], window_size) for c in schema.categorical}
        self.reference = self.prepare(reference)
        self.reference_predictions = reference_predictions
        self.predictions_categorical = (
            reference_predictions is not None and reference_predictions.dtype == object
        )

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Numbers as floats (missing values are dropped by the test), categories bucketed."""
        out = {}
        for name in self.schema.numeric:
            out[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
        for name in self.schema.categorical:
            out[name] = self.buckets[name].apply(frame[name])
        return pd.DataFrame(out)

    def run(self, window: pd.DataFrame, predictions: pd.Series | None = None) -> DriftResult:
        started = time.perf_counter()
        current = self.prepare(window)
        features = {}
        for name in self.schema.names:
            if name in self.buckets:
                features[name] = _test(
                    chi_stat_test, ColumnType.Categorical, self.reference[name], current[name],
                    self.categorical_p,
                )
            else:
                features[name] = _test(
                    ks_stat_test, ColumnType.Numerical, self.reference[name].dropna(),
                    current[name].dropna(), self.numeric_p,
                )
        drifted = [n for n, c in features.items() if c.drifted]
        share = len(drifted) / len(features)
        prediction = None
        reference = self.reference_predictions
        if reference is not None and predictions is not None and len(predictions):
            if self.predictions_categorical:
                prediction = _test(
                    chi_stat_test, ColumnType.Categorical, reference.astype(str),
                    predictions.astype(str), self.categorical_p,
                )
            else:
                prediction = _test(
                    ks_stat_test, ColumnType.Numerical, reference.astype(float),
                    predictions.astype(float), self.numeric_p,
                )
        return DriftResult(
            features=features,
            drift_share=share,
            dataset_drift=share >= self.share_threshold,
            rows=len(window),
            seconds=time.perf_counter() - started,
            prediction=prediction,
            checked_at=time.time(),
            drifted_features=drifted,
        )


def _test(
    stattest: StatTest, kind: ColumnType, reference: pd.Series, current: pd.Series, threshold: float
) -> ColumnDrift:
    if current.empty:  # e.g. a nullable column missing in every window row: nothing to judge
        return ColumnDrift(score=1.0, method=stattest.name, threshold=threshold, drifted=False)
    outcome = stattest(reference, current, kind, threshold)
    score = float(outcome.drift_score)
    # Evidently's p-value tests say drifted at p < threshold; the documented rule is p <= threshold.
    return ColumnDrift(score=score, method=stattest.name, threshold=threshold, drifted=score <= threshold)
