"""Train the reference credit-risk model and save it, with everything the guard needs, to the
BentoML model store.

    python -m training.train            # train and save credit_risk
    python -m training.train --if-missing   # only when the store has no credit_risk yet
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os

import numpy as np
from tqdm import tqdm

from monitors.reference import ReferenceStats
from service.credit import CREDIT_APP
from service.spec import GuardedApp
from training.data import SEED, Split, labels, load_credit_data, split_data, to_rows
from training.evaluate import agreement, score_table
from training.model import build_model

log = logging.getLogger("mlguard.training")

# A small, fixed grid: chosen on the validation split, reported on the test split.
GRID = {
    "learning_rate": [0.03, 0.05],
    "max_leaf_nodes": [8, 15],
    "min_samples_leaf": [30, 40],
}
FIXED = {"max_iter": 400, "l2_regularization": 1.0}
DECISION_THRESHOLD = 0.5


def _heuristic_scores(app: GuardedApp, rows: list[dict]) -> np.ndarray:
    return np.array([app.heuristic.score(r).probability for r in rows])


def train(app: GuardedApp, split: Split, progress: bool = True):
    """Fit on train, pick hyper-parameters on validation; returns (model, params, report)."""
    schema = app.features
    x_train = schema.matrix(to_rows(split.train, schema.names))
    x_val = schema.matrix(to_rows(split.validation, schema.names))
    y_train, y_val = labels(split.train), labels(split.validation)
    best = None
    combos = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    for params in tqdm(combos, desc="grid search", disable=not progress):
        model = build_model(schema, SEED, **FIXED, **params).fit(x_train, y_train)
        auc = score_table(y_val, model.predict_proba(x_val)[:, 1], DECISION_THRESHOLD)["roc_auc"]
        if best is None or auc > best[0]:
            best = (auc, params, model)
    return best[2], {**FIXED, **best[1]}, best[0]


def evaluate(app: GuardedApp, model, split: Split) -> dict:
    schema = app.features
    test_rows = to_rows(split.test, schema.names)
    val_rows = to_rows(split.validation, schema.names)
    y_test = labels(split.test)
    model_test = model.predict_proba(schema.matrix(test_rows))[:, 1]
    rules_test = _heuristic_scores(app, test_rows)
    model_val = model.predict_proba(schema.matrix(val_rows))[:, 1]
    rules_val = _heuristic_scores(app, val_rows)
    return {
        "threshold": DECISION_THRESHOLD,
        "test_rows": len(test_rows),
        "model": score_table(y_test, model_test, DECISION_THRESHOLD),
        "heuristic": score_table(y_test, rules_test, DECISION_THRESHOLD),
        # The decision agreement of model and rules on held-out data: the baseline that the
        # live shadow-agreement ratio is compared against.
        "validation_agreement": agreement(model_val, rules_val, DECISION_THRESHOLD),
    }


def save(app: GuardedApp, model, params: dict, split: Split, report: dict):
    import bentoml

    schema = app.features
    stats = ReferenceStats.from_frame(split.train, schema)
    return bentoml.sklearn.save_model(
        app.model_name,
        model,
        signatures={"predict_proba": {"batchable": False}},
        custom_objects={
            "feature_schema": schema.to_dict(),
            "reference_stats": stats.to_dict(),
            # The drift monitor compares live windows against the whole training split.
            "reference_sample": split.train[schema.names].reset_index(drop=True),
        },
        metadata={"params": params, "evaluation": report, "seed": SEED},
        labels={"application": app.name},
    )


def model_exists(name: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(f"{name}:latest")
        return True
    except NotFound:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-missing", action="store_true", help="skip when the store has it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.if_missing and model_exists(CREDIT_APP.model_name):
        log.info("model %s already in the store; not training", CREDIT_APP.model_name)
        return
    split = split_data(load_credit_data())
    model, params, val_auc = train(CREDIT_APP, split)
    report = evaluate(CREDIT_APP, model, split)
    saved = save(CREDIT_APP, model, params, split, report)
    log.info("saved %s (validation AUC %.4f)\n%s", saved.tag, val_auc, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
