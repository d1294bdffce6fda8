"""Train the tumour plug-in's LightGBM model and guard it: `python -m tests.apps.train_tumour`.

The model is a LightGBM booster (`lgb.train`) fitted on a pandas DataFrame whose columns are the
request's names as clients send them (the alias `worstConcavePoints` included), so LightGBM
remembers the column names and mlguard feeds it a DataFrame with the same columns. It is saved
with `bentoml.lightgbm` by `training.guard.guard_model`, with the yardstick (model vs the rules on
a holdout).
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

import pandas as pd

from tests.apps.tumour import APP

TARGET = "diagnosis"
# The data set's columns, by the names clients send.
COLUMNS = {
    "mean radius": "radius",
    "mean texture": "texture",
    "mean smoothness": "smoothness",
    "mean concave points": "concave_points",
    "worst area": "worst_area",
    "worst concave points": "worstConcavePoints",
}
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.1,
    "num_leaves": 8,
    "min_data_in_leaf": 10,
    "num_threads": 1,
    "deterministic": True,
    "seed": 7,
    "verbose": -1,
}
ROUNDS = 60


def load_tumour_data() -> pd.DataFrame:
    """The 569 samples: the six request fields and the target (benign or malignant)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame[list(COLUMNS)].rename(columns=COLUMNS)
    frame[TARGET] = data.target.map(dict(enumerate(data.target_names))).astype(str)
    return frame


def split(frame: pd.DataFrame, seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified 75/25 split: training rows and a holdout for the yardstick."""
    from sklearn.model_selection import train_test_split

    train, holdout = train_test_split(frame, test_size=0.25, random_state=seed, stratify=frame[TARGET])
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def fit(train: pd.DataFrame) -> Any:
    """A LightGBM booster predicting the probability of the positive class ("malignant")."""
    import lightgbm as lgb

    positive = APP.task.classes[1]
    features = train[APP.features.names]
    labels = (train[TARGET] == positive).astype(int)
    return lgb.train(PARAMS, lgb.Dataset(features, label=labels), num_boost_round=ROUNDS)


def train(name: str | None = None) -> Any:
    """Fit, guard and save; returns the stored model (its tag is the version to serve)."""
    from training.guard import guard_model

    train_rows, holdout = split(load_tumour_data())
    return guard_model(APP, fit(train_rows), train_rows, holdout, TARGET, name=name,
                       metadata={"data": "sklearn breast cancer, 6 features"})


def train_if_missing() -> Any:
    """The latest guarded LightGBM tumour model in the store, trained now if there is none."""
    import bentoml
    from bentoml.exceptions import NotFound

    from monitors.guard_card import CARD_KEY

    try:
        stored = bentoml.models.get(f"{APP.model_name}:latest")
    except NotFound:
        return train()
    if stored.info.module != "bentoml.lightgbm" or CARD_KEY not in stored.custom_objects:
        return train()
    return stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-missing", action="store_true", help="keep a guarded model already saved")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    saved = train_if_missing() if args.if_missing else train()
    print(f"saved {saved.tag}")


if __name__ == "__main__":
    main()
