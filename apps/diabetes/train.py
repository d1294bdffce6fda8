"""Train the diabetes model and save it, guarded, to the BentoML model store.

    python -m apps.diabetes.train               # train and save a new version of `diabetes`
    python -m apps.diabetes.train --if-missing  # only when the store has no guarded `diabetes` yet

A scikit-learn Pipeline (StandardScaler, then RidgeCV choosing its penalty by leave-one-out on the
training rows only) fitted on a pandas DataFrame with named columns: mlguard feeds it a DataFrame
of the same columns at serving time. Deterministic: a seeded 75/25 split (331 training patients,
111 held out); the yardstick (model vs rules, training/yardstick.py) is measured on the 111.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from apps.diabetes.app import DIABETES_APP
from training.guard import describe, guard_model, guarded_model_exists

log = logging.getLogger("mlguard.training")

TARGET = "progression"
SEED = 20240611
HOLDOUT_SHARE = 0.25
ALPHAS = np.logspace(-2, 3, 21)


def load_data() -> pd.DataFrame:
    """The 442 patients in their original units; sex as the integer code clients send (1 or 2)."""
    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": TARGET})
    frame["sex"] = frame["sex"].astype(int)
    frame["age"] = frame["age"].astype(int)
    return frame


def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    train, holdout = train_test_split(frame, test_size=HOLDOUT_SHARE, random_state=SEED)
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def build_model() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("regress", RidgeCV(alphas=ALPHAS))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-missing", action="store_true", help="skip when the store has it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.if_missing and guarded_model_exists(DIABETES_APP):
        log.info("model %s already in the store; not training", DIABETES_APP.model_name)
        return
    train, holdout = split(load_data())
    features = DIABETES_APP.features.names
    model = build_model().fit(train[features], train[TARGET])  # a DataFrame: named columns
    saved = guard_model(
        DIABETES_APP, model, train, holdout, TARGET,
        metadata={
            "seed": SEED, "holdout_share": HOLDOUT_SHARE, "train_rows": len(train),
            "alpha": float(model.named_steps["regress"].alpha_),
        },
    )
    log.info("%s", describe(saved))


if __name__ == "__main__":
    main()
