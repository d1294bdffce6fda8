"""The served model: loaded from the BentoML store with its own framework's loader, checked against
the plug-in, and put behind one narrow interface.

Any model saved by a BentoML framework module works (`bentoml.sklearn`, `bentoml.lightgbm`,
`bentoml.xgboost`, `bentoml.picklable_model`, ...): it is loaded by the module it was saved with,
then adapted. scikit-learn-style estimators answer through `predict_proba` (classification) or
`predict` (regression); a LightGBM or XGBoost booster through `predict`. Models fitted on a
DataFrame (named columns) get one, with the plug-in's feature names; others get an object array in
feature order. Anything else implements the `Model` protocol itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from monitors.features import FeatureSchema
from monitors.guard_card import CARD_KEY, GuardCard
from monitors.tasks import InvalidOutput, OutputPolicy
from service.spec import GuardedApp

WARMUP_ROWS = 32


@runtime_checkable
class Model(Protocol):
    """The model protocol: one method from feature rows to predictions.

    Implement it for a model no framework adapter knows (an ONNX Runtime session, a remote call
    wrapped in a class, a hand-written scorer) and save the object with
    `bentoml.picklable_model.save_model`; mlguard then calls it as it is.

    `predict_rows` receives the feature rows of one batch (dicts keyed by feature name, None for a
    missing value) and returns, for n rows:
    - binary: n probabilities of the positive class (or n x 2, classes in declared order);
    - multiclass: n x k probabilities, columns in the declared class order;
    - regression: n values.
    It is called from worker threads, under the deadline of `model.timeout_ms`; if it raises, the
    rows are answered by the rules (`model.error`).
    """

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Predict a batch of feature rows."""
        ...


class ModelRefused(RuntimeError):
    """The store's model cannot be served by this plug-in; the message says why and how to fix it."""


@dataclass(frozen=True)
class LoadedModel:
    version: str  # the store tag, e.g. my_model:px7nm4xldkf6sax4
    model: Model
    card: GuardCard
    seconds: float  # load and warm-up time


def guard_command(app: GuardedApp, tag: str) -> str:
    return (
        f"python -m training guard-model --app <module>:<APP> --model {tag} "
        f"--train train.csv --holdout holdout.csv --target <column>"
    )


def load_model(
    app: GuardedApp, tag: str, warmup_budget_s: float = 30.0, allow_worse_than_rules: bool = False
) -> LoadedModel:
    """Load, check and warm up one version; ModelRefused with a one-line fix when it cannot serve."""
    import bentoml
    from bentoml.exceptions import NotFound

    started = time.perf_counter()
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise ModelRefused(
            f"model {tag} is not in the store ({bentoml_home_models()}): train and save it "
            f"({guard_command(app, tag)}), or `bentoml models import` it"
        ) from None
    version = str(stored.tag)
    card_data = stored.custom_objects.get(CARD_KEY)
    if card_data is None:
        hint = (
            "it was saved by an earlier mlguard" if "reference_stats" in stored.custom_objects
            else "it was saved without mlguard's guard card"
        )
        raise ModelRefused(
            f"model {version} lacks what the guard needs ({hint}): run `{guard_command(app, version)}`"
        )
    card = GuardCard.from_custom_object(card_data)
    check_card(app, card, version)
    loaded = stored.load_model()  # by the framework module it was saved with
    model = adapt(loaded, app, card, version)
    warmup_started = time.perf_counter()
    warm_up(app, model, card, version)
    took = time.perf_counter() - warmup_started
    if took > warmup_budget_s:
        raise ModelRefused(
            f"model {version} took {took:.1f} s to answer its warm-up batch, more than "
            f"model.warmup_timeout_s ({warmup_budget_s:g} s)"
        )
    if not allow_worse_than_rules:  # last: a model of the wrong kind is told that first
        check_beats_rules(card, version)
    return LoadedModel(version, model, card, time.perf_counter() - started)


def bentoml_home_models() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.model_store_dir.get())


def check_card(app: GuardedApp, card: GuardCard, version: str) -> None:
    """The model was guarded as this plug-in's task, classes and features."""
    task = app.task
    if card.task != task.kind:
        raise ModelRefused(
            f"model {version} is a {card.task} model, the plug-in {app.name} declares {task.kind}: "
            f"declare task={card.task.title()}(...) or guard a {task.kind} model"
        )
    declared = getattr(task, "classes", None)
    if declared is not None and tuple(card.classes or ()) != tuple(declared):
        raise ModelRefused(
            f"model {version} has classes {list(card.classes or ())}, the plug-in declares "
            f"{list(declared)}: declare the model's classes"
        )
    if card.features.names != app.features.names:
        raise ModelRefused(
            f"model {version} was trained on features {card.features.names}, the plug-in declares "
            f"{app.features.names}: re-run `{guard_command(app, version)}`"
        )


def check_beats_rules(card: GuardCard, version: str) -> None:
    """The promotion gate: a version no better than the rules on its saved yardstick is refused."""
    y = card.yardstick
    if y and not y.get("model_beats_rules", False):
        metric = y.get("metric")
        raise ModelRefused(
            f"model {version} does not beat the rules on its yardstick ({metric}: model "
            f"{y['model'].get(metric)}, rules {y['heuristic'].get(metric)}): serve the rules, or set "
            f"model.allow_worse_than_rules: true"
        )


def adapt(obj: Any, app: GuardedApp, card: GuardCard, version: str) -> Model:
    """Put a framework's model behind the Model protocol, or refuse it with the reason."""
    if isinstance(obj, Model):
        return obj
    task = app.task
    inputs = _input_builder(obj, app.features, version)
    if task.kind == "regression":
        if hasattr(obj, "predict_proba") or hasattr(obj, "classes_"):
            raise ModelRefused(
                f"model {version} is a classifier, the plug-in {app.name} declares regression"
            )
        return _Predict(obj.predict, inputs)
    classes = tuple(task.classes)
    if hasattr(obj, "predict_proba"):
        found = [str(c) for c in getattr(obj, "classes_", [])]
        if sorted(found) != sorted(classes):
            raise ModelRefused(
                f"model {version} predicts classes {found}, the plug-in {app.name} declares "
                f"{task.kind} with {list(classes)}"
            )
        order = [found.index(c) for c in classes]
        return _Predict(lambda x: obj.predict_proba(x)[:, order], inputs)
    if _is_booster(obj):
        return _Predict(_booster_predict(obj), inputs)
    raise ModelRefused(
        f"model {version} ({type(obj).__name__}) has no predict_proba: a regressor cannot serve "
        f"the {task.kind} plug-in {app.name}"
    )


class _Predict:
    """A framework model's predict function fed the input it was fitted on."""

    def __init__(self, predict: Any, inputs: Any) -> None:
        self._predict = predict
        self._inputs = inputs

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        return np.asarray(self._predict(self._inputs(rows)), dtype=float)


def _is_booster(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] in ("lightgbm", "xgboost") and hasattr(obj, "predict")


def _booster_predict(obj: Any) -> Any:
    if type(obj).__module__.startswith("xgboost"):
        import xgboost

        return lambda frame: obj.predict(xgboost.DMatrix(frame))
    return obj.predict


def _fitted_names(obj: Any) -> list[str] | None:
    """The column names a model was fitted on, when it was fitted on a DataFrame."""
    names = getattr(obj, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names]
    if type(obj).__module__.startswith("lightgbm") and hasattr(obj, "feature_name"):
        return list(obj.feature_name())
    if type(obj).__module__.startswith("xgboost") and getattr(obj, "feature_names", None):
        return list(obj.feature_names)
    return None


def _input_builder(obj: Any, schema: FeatureSchema, version: str) -> Any:
    fitted = _fitted_names(obj)
    if fitted is None:
        expected = getattr(obj, "n_features_in_", None)
        if expected is not None and expected != len(schema.names):
            raise ModelRefused(
                f"model {version} expects {expected} features, the plug-in declares "
                f"{len(schema.names)}: {schema.names}"
            )
        return schema.matrix
    if sorted(fitted) != sorted(schema.names):
        missing = sorted(set(schema.names) - set(fitted))
        unknown = sorted(set(fitted) - set(schema.names))
        raise ModelRefused(
            f"model {version} was fitted on columns {fitted}; the plug-in's features differ "
            f"(not in the model: {missing}, not declared: {unknown})"
        )
    return _frame_builder(obj, fitted, schema)


def _frame_builder(obj: Any, columns: list[str], schema: FeatureSchema) -> Any:
    import pandas as pd

    numeric = set(schema.numeric)
    # LightGBM remembers the categories of pandas category columns it was trained on.
    known = getattr(obj, "pandas_categorical", None) or []
    categorical = [c for c in columns if c not in numeric]
    categories = dict(zip(categorical, known)) if len(known) == len(categorical) else {}

    def build(rows: list[dict[str, Any]]) -> pd.DataFrame:
        frame = pd.DataFrame.from_records(
            [[row.get(c) for c in columns] for row in rows], columns=columns
        )
        for c in columns:
            if c in numeric:
                frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
            elif c in categories:
                frame[c] = pd.Categorical(frame[c], categories=categories[c])
        return frame

    return build


def warm_up(app: GuardedApp, model: Model, card: GuardCard, version: str) -> None:
    """The model answers its own reference rows with valid outputs, or it is refused."""
    rows = card.sample_rows(WARMUP_ROWS)
    try:
        raw = np.asarray(model.predict_rows(rows), dtype=float)
    except Exception as exc:
        raise ModelRefused(
            f"model {version} failed on its own reference rows: {type(exc).__name__}: {exc}"
        ) from exc
    if raw.shape[0] != len(rows):
        raise ModelRefused(f"model {version} answered {raw.shape[0]} rows for {len(rows)}")
    # A sanity check, not the serving checks: the range is widened by its whole width.
    answers = app.task.from_model(raw, output_policy(card, 0.5, range_tolerance=1.0, agreement=0.0))
    invalid = [a for a in answers if isinstance(a, InvalidOutput)]
    if invalid:
        raise ModelRefused(
            f"model {version} answered invalid outputs on its own reference rows "
            f"({len(invalid)} of {len(rows)}, e.g. {invalid[0]}): is it a {app.task.kind} model?"
        )


def output_policy(
    card: GuardCard | None, threshold: float, range_tolerance: float, agreement: float
) -> OutputPolicy:
    """The output checks in force for a version: the config's numbers, the card's target range."""
    bounds = None
    iqr = 0.0
    if card is not None and card.target:
        low, high = card.target["min"], card.target["max"]
        slack = (high - low) * range_tolerance
        bounds = (low - slack, high + slack)
        iqr = card.target["iqr"]
    return OutputPolicy(threshold, bounds, agreement * iqr)
