"""The on-demand HTML report: Evidently's DataDriftPreset with the same methods as the checks.

Rendering costs about a second (plotly widgets), which is why it runs only when someone asks.
"""
from __future__ import annotations

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

from monitors.drift.check import DriftCheck


def render_report(check: DriftCheck, window: pd.DataFrame) -> str:
    schema = check.schema
    # Declared, not guessed: Evidently would take low-cardinality integers for categories.
    definition = DataDefinition(numerical_columns=schema.numeric, categorical_columns=schema.categorical)
    preset = DataDriftPreset(
        columns=schema.names,
        num_method="ks",
        cat_method="chisquare",
        num_threshold=check.numeric_p,
        cat_threshold=check.categorical_p,
        drift_share=check.share_threshold,
    )
    snapshot = Report([preset], include_tests=True).run(
        Dataset.from_pandas(check.prepare(window), data_definition=definition),
        Dataset.from_pandas(check.reference, data_definition=definition),
    )
    return snapshot.get_html_str(as_iframe=False)
