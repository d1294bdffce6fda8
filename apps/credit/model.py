"""The reference model: ordinal-encode the categories, then gradient-boosted trees.

HistGradientBoosting handles missing values and categorical splits natively, so nothing is imputed.
"""
from __future__ import annotations

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from monitors.features import FeatureSchema


def build_model(schema: FeatureSchema, seed: int, **params) -> Pipeline:
    names = schema.names
    cat_idx = [names.index(c) for c in schema.categorical]
    num_idx = [names.index(c) for c in schema.numeric]
    encode = ColumnTransformer(
        [
            (
                "categories",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                ),
                cat_idx,
            ),
            ("numbers", "passthrough", num_idx),
        ]
    )
    trees = HistGradientBoostingClassifier(
        categorical_features=list(range(len(cat_idx))), random_state=seed, **params
    )
    return Pipeline([("encode", encode), ("trees", trees)])

