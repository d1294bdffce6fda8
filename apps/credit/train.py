"""Train the reference credit-risk model and save it, guarded, to the BentoML model store.

    python -m apps.credit.train               # train and save credit_risk
    python -m apps.credit.train --if-missing  # only when the store has no guarded credit_risk yet

A small, fixed grid chosen on the validation split; the yardstick (model vs rules) is measured on
the test split, never seen in training or selection. Deterministic: seeded split, and a logistic
scorecard whose fit has no randomness (apps/credit/model.py).
"""
from __future__ import annotations

import argparse
import itertools
import logging

from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from apps.credit.app import CREDIT_APP
from apps.credit.data import (
    POSITIVE,
    SEED,
    TARGET,
    Split,
    labels,
    load_credit_data,
    split_data,
    to_rows,
)
from apps.credit.model import build_model
from training.guard import describe, guard_model, guarded_model_exists

log = logging.getLogger("mlguard.training")

GRID = {
    "bins": [5, 8, 10],  # per numeric feature, at training quantiles
    "C": [0.1, 0.3, 1.0],  # inverse L2 strength of the regression on the bins
}
FIXED = {"max_iter": 2000}


def train(split: Split, progress: bool = True):
    """Fit on train, pick hyper-parameters on validation AUC; returns (model, params, auc)."""
    schema = CREDIT_APP.features
    x_train = schema.matrix(to_rows(split.train, schema.names))
    x_val = schema.matrix(to_rows(split.validation, schema.names))
    y_train, y_val = split.train[TARGET].to_numpy(), labels(split.validation)
    best = None
    combos = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    for params in tqdm(combos, desc="grid search", disable=not progress):
        model = build_model(schema, SEED, **FIXED, **params).fit(x_train, y_train)
        positive = list(model.classes_).index(POSITIVE)
        auc = roc_auc_score(y_val, model.predict_proba(x_val)[:, positive])
        if best is None or auc > best[0]:
            best = (auc, params, model)
    return best[2], {**FIXED, **best[1]}, round(float(best[0]), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-missing", action="store_true", help="skip when the store has it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.if_missing and guarded_model_exists(CREDIT_APP):
        log.info("model %s already in the store; not training", CREDIT_APP.model_name)
        return
    split = split_data(load_credit_data())
    model, params, val_auc = train(split)
    saved = guard_model(
        CREDIT_APP, model, split.train, split.test, TARGET,
        metadata={"params": params, "seed": SEED, "validation_auc": val_auc},
    )
    log.info("%s\n(validation AUC %.4f)", describe(saved), val_auc)


if __name__ == "__main__":
    main()
