"""Train the wine model and save it, guarded, to the BentoML model store.

    python -m apps.wine.train               # train and save a new version of `wine`
    python -m apps.wine.train --if-missing  # only when the store has no guarded `wine` yet

A scikit-learn Pipeline (StandardScaler, then LogisticRegression with its default C=1, not tuned)
fitted on a pandas DataFrame with named columns: mlguard feeds it a DataFrame of the same
columns at serving time. Deterministic: a seeded, stratified 70/30 split (124 training wines,
54 held out), and the yardstick (model vs rules, training/yardstick.py) is measured on the 54.
"""
from __future__ import annotations

import argparse
import logging

import pandas as pd
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from apps.wine.app import WINE_APP
from training.guard import describe, guard_model, guarded_model_exists

log = logging.getLogger("mlguard.training")

TARGET = "cultivar"
SEED = 20240611
HOLDOUT_SHARE = 0.3


def load_data() -> pd.DataFrame:
    """The 178 wines, columns named as the request schema names them, the target as class names."""
    data = load_wine(as_frame=True)
    frame = data.frame.rename(columns={"od280/od315_of_diluted_wines": "od280_od315"})
    frame[TARGET] = frame.pop("target").map(dict(enumerate(data.target_names)))
    return frame


def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    train, holdout = train_test_split(
        frame, test_size=HOLDOUT_SHARE, random_state=SEED, stratify=frame[TARGET]
    )
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def build_model() -> Pipeline:
    return Pipeline([
        ("scale", StandardScaler()),
        ("classify", LogisticRegression(C=1.0, max_iter=1000)),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-missing", action="store_true", help="skip when the store has it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.if_missing and guarded_model_exists(WINE_APP):
        log.info("model %s already in the store; not training", WINE_APP.model_name)
        return
    train, holdout = split(load_data())
    features = WINE_APP.features.names
    model = build_model().fit(train[features], train[TARGET])  # a DataFrame: named columns
    saved = guard_model(
        WINE_APP, model, train, holdout, TARGET,
        metadata={"seed": SEED, "holdout_share": HOLDOUT_SHARE, "train_rows": len(train)},
    )
    log.info("%s", describe(saved))


if __name__ == "__main__":
    main()
