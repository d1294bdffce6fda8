"""One call to guard a model you already have: `guard_model(app, model, train, holdout, target)`.

From training rows and a held-out set with the target (DataFrames or CSV paths), it computes what
the guard needs (reference statistics of the features, a reference sample for drift, the target's
range for regression output checks), evaluates the model and the rules side by side on the holdout
(the yardstick), and saves it all with the model in the BentoML store, as a new version:
- `model` an object (a fitted scikit-learn estimator, a LightGBM booster, an object implementing
  the `Model` protocol): saved with its framework's BentoML module;
- `model` a store tag (e.g. a model saved with plain `bentoml.sklearn.save_model`): loaded and
  saved again, with the guard card, as a new version of the same name (adopted).
The CLI (`python -m training guard-model ...`, training/__main__.py) is the same for CSV files.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitors.guard_card import CARD_KEY, GuardCard
from monitors.performance.cbpe import Calibration
from monitors.reference import ReferenceStats
from monitors.tasks import OutputPolicy
from service.scoring.model import ModelRefused, adapt, warm_up
from service.spec import GuardedApp
from training.yardstick import yardstick

log = logging.getLogger("mlguard.training")

SAMPLE_ROWS = 5_000  # the drift reference sample: at most this many training rows, seeded
SEED = 20240611


def read_rows(data: pd.DataFrame | str | Path) -> pd.DataFrame:
    return pd.read_csv(data) if isinstance(data, str | Path) else data.reset_index(drop=True)


def request_rows(app: GuardedApp, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as clients send them: the request's fields only, missing values as None."""
    names = app.inputs.names
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ValueError(
            f"columns {missing} of the request schema {app.request.__name__} are not in the data "
            f"(it has {list(frame.columns)})"
        )
    sub = frame[names].astype(object)
    return sub.where(sub.notna(), None).to_dict("records")


def feature_frame(app: GuardedApp, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The model's features of request rows, through the plug-in's transform when it has one."""
    return pd.DataFrame([app.features_of(r) for r in rows], columns=app.features.names)


def framework_of(model: Any) -> str:
    """The BentoML module that saves an object: by the library its class comes from."""
    root = type(model).__module__.split(".")[0]
    if root in ("lightgbm", "xgboost"):
        return f"bentoml.{root}"
    if root == "sklearn" or hasattr(model, "predict_proba") and hasattr(model, "fit"):
        return "bentoml.sklearn"
    return "bentoml.picklable_model"


def build_card(
    app: GuardedApp, model: Any, train: pd.DataFrame, holdout: pd.DataFrame, target: str,
    threshold: float = 0.5,
) -> GuardCard:
    """Everything the guard needs; raises ValueError (or ModelRefused) naming what does not fit."""
    for name, frame in (("train", train), ("holdout", holdout)):
        if target not in frame.columns:
            raise ValueError(f"target column {target!r} is not in the {name} data")
    task = app.task
    train_rows, holdout_rows = request_rows(app, train), request_rows(app, holdout)
    features = feature_frame(app, train_rows)
    y_train, y_holdout = train[target].to_numpy(), holdout[target].to_numpy()
    classes = getattr(task, "classes", None)
    if classes is not None:
        y_train, y_holdout = y_train.astype(str), y_holdout.astype(str)
        unknown = sorted(set(y_holdout) - set(classes))
        if unknown:
            raise ValueError(f"target values {unknown} are not among the declared classes {list(classes)}")
    target_stats = {}
    if task.kind == "regression":
        y = y_train.astype(float)
        q1, q3 = np.percentile(y, [25, 75])
        target_stats = {"min": float(y.min()), "max": float(y.max()), "iqr": float(q3 - q1)}
    sample = features.sample(min(len(features), SAMPLE_ROWS), random_state=SEED).sort_index()
    sample = sample.astype(object).where(sample.notna(), None)
    card = GuardCard(
        app=app.name,
        task=task.kind,
        classes=tuple(classes) if classes is not None else None,
        features=app.features,
        reference=ReferenceStats.from_frame(features, app.features),
        sample={c: sample[c].tolist() for c in app.features.names},
        yardstick={},
        target=target_stats,
    )
    served = adapt(model, app, card, "(to be guarded)")  # refuses a model of the wrong kind, naming why
    warm_up(app, served, card, "(to be guarded)")
    iqr = target_stats.get("iqr", 0.0)
    policy = OutputPolicy(threshold, None, 0.5 * iqr)  # shadow.tolerance's default
    report = yardstick(app, served.predict_rows, holdout_rows, y_holdout, policy)
    calibration: dict[str, Any] = {}
    if task.kind == "binary":
        # The model's probabilities on the holdout against its outcomes: what the label-free
        # performance estimate (CBPE) calibrates with. Valid outputs: the yardstick checked them.
        raw = np.asarray(served.predict_rows([app.features_of(r) for r in holdout_rows]), dtype=float)
        probabilities = np.array([out.score for out in task.from_model(raw, policy)])
        calibration = Calibration.fit(probabilities, task.target_index(y_holdout)).to_dict()
    return GuardCard(**{**vars(card), "yardstick": report, "calibration": calibration})


def _check_booster_class_order(app: GuardedApp, obj: Any, framework: str) -> None:
    """A LightGBM/XGBoost scikit-learn wrapper is saved as its bare booster, which answers in the
    wrapper's (sorted) class order and forgets `classes_`: served, a different declared order would
    be silently inverted (the yardstick, computed on the wrapper, would not show it)."""
    classes = getattr(app.task, "classes", None)
    fitted = getattr(obj, "classes_", None)
    if framework not in ("bentoml.lightgbm", "bentoml.xgboost") or classes is None or fitted is None:
        return
    if [str(c) for c in fitted] != list(classes):
        raise ModelRefused(
            f"the model's classes are {[str(c) for c in fitted]} in its own order, the plug-in "
            f"declares {list(classes)}; {framework} saves the bare booster, which answers in the "
            f"model's order: train the booster itself (e.g. lgb.train) on labels 0..{len(classes) - 1} "
            f"in the declared order"
        )


def guard_model(
    app: GuardedApp,
    model: Any,
    train: pd.DataFrame | str | Path,
    holdout: pd.DataFrame | str | Path,
    target: str,
    name: str | None = None,
    threshold: float = 0.5,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """Guard and save; returns the stored BentoML model (its tag is the version to serve)."""
    import bentoml

    labels = {"mlguard_app": app.name}
    if isinstance(model, str):  # a store tag: adopt it as a new version of the same name
        stored = bentoml.models.get(model)
        framework = stored.info.module
        obj = stored.load_model()
        name = name or stored.tag.name
        metadata = {**stored.info.metadata, **(metadata or {})}
        labels = {**stored.info.labels, **labels}
    else:
        obj, framework = model, framework_of(model)
    _check_booster_class_order(app, obj, framework)
    card = build_card(app, obj, read_rows(train), read_rows(holdout), target, threshold)
    module = importlib.import_module(framework)
    saved = module.save_model(
        name or app.model_name,
        obj,
        custom_objects={CARD_KEY: card.to_custom_object()},
        metadata={**(metadata or {}), CARD_KEY: card.summary()},
        labels=labels,
    )
    log.info("saved %s, guarded for %s (%s)", saved.tag, app.name, app.task.kind)
    return saved


def guarded_model_exists(app: GuardedApp) -> bool:
    """The store's latest version of the plug-in's model carries a guard card (one saved by an
    earlier mlguard, or by plain BentoML, does not): what a training script's --if-missing asks."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return CARD_KEY in bentoml.models.get(f"{app.model_name}:latest").info.metadata
    except NotFound:
        return False


def describe(saved: Any) -> str:
    """The saved tag and its yardstick table, as a training script prints it."""
    from training.yardstick import table

    return f"saved {saved.tag}\n{table(saved.info.metadata[CARD_KEY]['yardstick'])}"
