"""The statistics of live performance (monitors/performance/): realized metrics equal
scikit-learn's, the paired model-vs-rules delta is right on cases whose answer is known, and the
label-free estimate (CBPE) is close to the realized value on perfectly calibrated data."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel
from sklearn import metrics as skm

from fallbacks.base import HeuristicResult
from monitors.drift.policy import DriftPolicy, Hysteresis
from monitors.features import FeatureSchema
from monitors.guard_card import FORMAT, GuardCard
from monitors.performance import (
    DEFAULT_METRIC,
    METRICS,
    Calibration,
    PairedDelta,
    below_rules,
    estimate,
    paired_delta,
    realized,
)
from monitors.performance import paired as paired_module
from monitors.performance.cbpe import expected_auc
from monitors.performance.realized import FUNCTIONS, prepare
from monitors.reference import ReferenceStats
from monitors.tasks import Binary
from service.spec import GuardedApp

# --- realized metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_binary_metrics_equal_scikit_learn(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    p = np.round(np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1), 2)  # rounded: many ties
    decided = (p >= threshold).astype(int)
    got = realized("binary", y, p, threshold)
    assert list(got) == list(METRICS["binary"])
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, decided), abs=1e-12)
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert got["precision"] == pytest.approx(skm.precision_score(y, decided), abs=1e-12)
    assert got["recall"] == pytest.approx(skm.recall_score(y, decided), abs=1e-12)


def test_binary_metrics_undefined_are_none() -> None:
    one_class = realized("binary", np.zeros(5, int), np.linspace(0.1, 0.9, 5), 0.5)
    assert one_class["roc_auc"] is None and one_class["recall"] is None  # no positive outcome
    assert one_class["accuracy"] == pytest.approx(0.4) and one_class["precision"] == 0.0
    never_positive = realized("binary", np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]), 0.5)
    assert never_positive["precision"] is None and never_positive["recall"] == 0.0
    assert never_positive["roc_auc"] == 1.0
    assert set(realized("binary", np.array([]), np.array([]), 0.5).values()) == {None}


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_metrics_equal_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.choice(["red", "white", "rose"], 300)
    # "orange" is only ever decided, never an outcome: it counts in macro F1, as in scikit-learn.
    decided = np.where(rng.random(300) < 0.6, y, rng.choice(["red", "white", "orange"], 300))
    got = realized("multiclass", y, decided)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, decided), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, decided, average="macro"), abs=1e-12)


def test_regression_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(10, 3, 250)
    v = y + rng.normal(0, 1.5, 250)
    got = realized("regression", y, v)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, v), abs=1e-12)
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, v)), abs=1e-12)


def test_batched_metrics_equal_the_metric_of_each_resample() -> None:
    """The bootstrap's vectorised form (B resamples at once) gives, resample by resample, what
    realized() gives on the resampled rows: duplicated rows and tied scores included."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60), 1)
    idx = rng.integers(0, 60, size=(25, 60))
    y_, p_ = prepare("binary", y, p)
    for name, fn in FUNCTIONS["binary"].items():
        batched = fn(y_, p_, idx, 0.5)
        one_by_one = [realized("binary", y[i], p[i], 0.5)[name] for i in idx]
        assert batched == pytest.approx(np.array(one_by_one, dtype=float), abs=1e-12, nan_ok=True), name


@pytest.mark.parametrize(
    ("kind", "y", "scores", "match"),
    [
        ("ordinal", [1], [0.5], "task kind"),
        ("binary", [1, 0], [0.5], "one length"),
        ("binary", [2, 0], [0.5, 0.5], "1 .the positive class. or 0"),
        ("binary", [1, 0], [0.5, float("nan")], "finite"),
        ("regression", [1.0, float("inf")], [0.5, 0.5], "finite"),
    ],
)
def test_bad_inputs_are_refused(kind: str, y: list, scores: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        realized(kind, np.array(y), np.array(scores))


# --- the paired delta ---------------------------------------------------------------------------


def test_perfect_model_against_random_rules_is_better_with_confidence() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    model = np.where(y == 1, 0.6 + 0.4 * rng.random(300), 0.4 * rng.random(300))
    rules = rng.random(300)
    for metric in METRICS["binary"]:
        d = paired_delta("binary", metric, y, model, rules, 0.5)
        assert d.low > 0, (metric, d)
        assert d.low <= d.estimate <= d.high
        assert below_rules(d, d.n, 200) is False
    assert paired_delta("binary", None, y, model, rules).metric == DEFAULT_METRIC["binary"] == "roc_auc"


def test_identical_scorers_differ_by_exactly_zero() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 200)
    p = rng.random(200)
    d = paired_delta("binary", "roc_auc", y, p, p.copy(), 0.5)
    assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.resamples == 1000 and d.n == 200 and d.model == d.rules
    assert below_rules(d, d.n, 100) is False


def test_auc_delta_computed_by_hand() -> None:
    """y = 0 0 1 1. The model ranks both positives above both negatives: AUC 1. The rules rank
    the (positive, negative) pairs (2,0) wrong, (2,1) right, (3,0) wrong, (3,1) wrong: AUC 1/4."""
    y = np.array([0, 0, 1, 1])
    d = paired_delta("binary", "roc_auc", y, np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.2, 0.8, 0.1]))
    assert (d.model, d.rules, d.estimate) == (1.0, 0.25, 0.75)
    assert d.resamples < 1000  # resamples that drew one class only have no AUC and are dropped


def test_bootstrap_interval_computed_by_hand() -> None:
    """Two rows: on the first only the model is right (difference 1), on the second both are
    (difference 0). A resample of two rows has mean difference 0 (chance 1/4), 1/2 (1/2) or 1
    (1/4): the 95% percentile interval is [0, 1] around the estimate 1/2."""
    y = np.array([1, 1])
    d = paired_delta("binary", "accuracy", y, np.array([0.9, 0.9]), np.array([0.1, 0.9]), 0.5, resamples=4000)
    assert (d.estimate, d.low, d.high) == (0.5, 0.0, 1.0)
    assert below_rules(d, d.n, 2) is False and below_rules(d, d.n, 3) is None


@pytest.mark.parametrize("metric", ["brier", "mae", "rmse"])
def test_lower_is_better_metrics_are_reported_as_rules_minus_model(metric: str) -> None:
    kind = "binary" if metric == "brier" else "regression"
    y = np.array([1, 0, 1, 0]) if kind == "binary" else np.array([1.0, 2.0, 3.0, 4.0])
    model = np.array([0.9, 0.1, 0.8, 0.2]) if kind == "binary" else y + 0.5
    rules = np.array([0.5, 0.5, 0.5, 0.5]) if kind == "binary" else y - 2.0
    d = paired_delta(kind, metric, y, model, rules)
    by_hand = {"brier": 0.25 - (0.01 + 0.01 + 0.04 + 0.04) / 4, "mae": 2.0 - 0.5, "rmse": 2.0 - 0.5}
    assert d.estimate == pytest.approx(by_hand[metric]) and d.estimate == pytest.approx(d.rules - d.model)
    assert d.estimate > 0  # positive: the model is better
    worse = paired_delta(kind, metric, y, rules, model)
    assert worse.estimate == pytest.approx(-d.estimate) and below_rules(worse, worse.n, 4) is (worse.high < 0)


def test_multiclass_and_regression_defaults() -> None:
    y = np.array(["a", "b", "c", "a", "b", "c"] * 20)
    rules = np.array(["a"] * 120)
    d = paired_delta("multiclass", None, y, y.copy(), rules)
    assert d.metric == "accuracy" and d.estimate == pytest.approx(1 - 1 / 3) and d.low > 0
    f1 = paired_delta("multiclass", "macro_f1", y, rules, y.copy())
    assert f1.high < 0 and below_rules(f1, f1.n, 100) is True
    r = paired_delta("regression", None, np.arange(50.0), np.arange(50.0), np.arange(50.0) + 1)
    assert r.metric == "mae" and r.estimate == 1.0 and r.low == r.high == 1.0


def test_deterministic_given_the_seed_and_drawn_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 150)
    model, rules = rng.random(150), rng.random(150)
    first = paired_delta("binary", "roc_auc", y, model, rules, seed=11)
    assert paired_delta("binary", "roc_auc", y, model, rules, seed=11) == first
    assert paired_delta("binary", "roc_auc", y, model, rules, seed=12) != first
    # Chunks of 7 resamples: the same number of resamples, an interval about as wide.
    monkeypatch.setattr(paired_module, "CHUNK_CELLS", 7 * 150)
    chunked = paired_delta("binary", "roc_auc", y, model, rules, seed=11)
    assert chunked.resamples == 1000 and chunked.estimate == first.estimate
    assert chunked.high - chunked.low == pytest.approx(first.high - first.low, rel=0.2)


def test_undefined_metric_or_no_rows_gives_no_verdict() -> None:
    one_class = paired_delta("binary", "roc_auc", np.ones(300, int), np.random.default_rng(0).random(300),
                             np.full(300, 0.5))
    assert one_class.estimate is None and one_class.high is None and one_class.model is None
    assert below_rules(one_class, one_class.n, 10) is None
    empty = paired_delta("binary", None, np.array([]), np.array([]), np.array([]))
    assert empty.n == 0 and empty.estimate is None and below_rules(empty, 0, 10) is None
    assert PairedDelta(**empty.to_dict()) == empty


def test_false_alarms_at_the_boundary_stay_near_the_nominal_rate() -> None:
    """Two scorers of equal strength (the same signal plus independent noise of the same size):
    'model below rules' (the interval's upper end below 0) should happen in about 2.5% of windows."""
    rng = np.random.default_rng(8)
    alarms = 0
    for window in range(80):
        y = rng.integers(0, 2, 300)
        signal = y + rng.normal(0, 1, 300)
        model, rules = signal + rng.normal(0, 1, 300), signal + rng.normal(0, 1, 300)
        alarms += bool(paired_delta("binary", "roc_auc", y, model, rules, resamples=400, seed=window).high < 0)
    assert alarms / 80 <= 0.075


def test_routing_hysteresis_is_the_drift_policy() -> None:
    """below_rules feeds the drift policy: two consecutive 'worse' checks enter, two 'not worse'
    leave, a check without a verdict (None) is skipped and breaks no streak."""
    policy = DriftPolicy(lambda: Hysteresis(enter_after=2, exit_after=2, on_error="keep"))
    worse = PairedDelta("roc_auc", -0.1, -0.15, -0.05, 500, 0.95, "test", 1000, 0.7, 0.8)
    fine = PairedDelta("roc_auc", 0.02, -0.01, 0.05, 500, 0.95, "test", 1000, 0.82, 0.8)
    states = []
    for delta, n in [(worse, 500), (worse, 50), (worse, 500), (fine, 500), (worse, 40), (fine, 500)]:
        verdict = below_rules(delta, n, min_labels=200)
        if verdict is not None:
            policy.record_check(verdict)
        states.append(policy.drifted)
    assert states == [False, False, True, True, True, False]


# --- CBPE ---------------------------------------------------------------------------------------


def test_isotonic_calibration_equals_scikit_learn() -> None:
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(9)
    p = np.round(rng.beta(1.5, 3, 800), 3)
    y = (rng.random(800) < p**0.8).astype(int)
    cal = Calibration.fit(p, y)
    iso = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    grid = np.linspace(-0.1, 1.1, 2001)
    assert np.abs(cal.calibrate(grid) - iso.predict(grid)).max() < 1e-12
    assert list(cal.x) == pytest.approx(iso.X_thresholds_.tolist())
    assert all(b >= a for a, b in zip(cal.y, cal.y[1:])) and cal.rows == 800


def test_calibration_round_trips_and_refuses_what_it_cannot_read() -> None:
    cal = Calibration.fit(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 1, 0, 1]))
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="method"):
        Calibration.from_dict({**cal.to_dict(), "method": "platt"})
    with pytest.raises(ValueError, match="knots"):
        Calibration.from_dict({**cal.to_dict(), "x": [0.5, 0.1] + list(cal.x[2:])})
    with pytest.raises(ValueError, match="two or more"):
        Calibration.fit(np.array([0.5]), np.array([1]))


def test_expected_auc_equals_the_sum_over_pairs() -> None:
    rng = np.random.default_rng(10)
    s, c = np.round(rng.random(40), 1), rng.random(40)
    num = den = 0.0
    for i in range(40):
        for j in range(40):
            if i != j:
                w = c[i] * (1 - c[j])
                den += w
                num += w * ((s[i] > s[j]) + 0.5 * (s[i] == s[j]))
    assert expected_auc(s, c) == pytest.approx(num / den, abs=1e-12)
    assert expected_auc(np.full(5, 0.3), c[:5]) == pytest.approx(0.5)  # all tied
    assert expected_auc(s[:3], np.ones(3)) is None  # no row can be negative


def test_estimate_is_close_to_realized_on_perfectly_calibrated_data() -> None:
    """Outcomes drawn with the score as their chance: the calibration (fitted on other rows) is
    near the identity, and over 100 windows of 500 rows the estimate's error is no more than the
    realized metric's own spread between windows, with a bias within noise."""
    rng = np.random.default_rng(12)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        s = rng.beta(1.2, 3, n)
        return s, (rng.random(n) < s).astype(int)

    cal = Calibration.fit(*draw(5000))
    errors, realized_values = [], []
    for _ in range(100):
        s, y = draw(500)
        est, real = estimate(s, 0.5, cal), realized("binary", y, s, 0.5)
        errors.append([est["accuracy"] - real["accuracy"], est["roc_auc"] - real["roc_auc"]])
        realized_values.append([real["accuracy"], real["roc_auc"]])
    errors_, spread = np.array(errors), np.array(realized_values).std(axis=0)
    assert (np.abs(errors_).mean(axis=0) < 1.2 * spread).all(), (np.abs(errors_).mean(axis=0), spread)
    assert (np.abs(errors_.mean(axis=0)) < 0.01).all()  # bias: ~3 standard errors of the mean
    assert estimate(np.array([]), 0.5, cal) == {"accuracy": None, "roc_auc": None}


# --- the guard card -----------------------------------------------------------------------------


class Point(BaseModel):
    x1: float
    x2: float


class PointRules:
    name = "point_rules"

    def score(self, row: Any) -> HeuristicResult:
        return HeuristicResult(probability=0.8 if row["x1"] > 0 else 0.2, rules=("x1_positive",))


POINT_APP = GuardedApp(name="point", request=Point, task=Binary(classes=("no", "yes"), safe_default="no"),
                       heuristic=PointRules())


def points(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    chance = 1 / (1 + np.exp(-(2 * x[:, 0] + x[:, 1])))
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1],
                         "target": np.where(rng.random(n) < chance, "yes", "no")})


def test_build_card_calibrates_binary_models_on_the_holdout() -> None:
    from sklearn.linear_model import LogisticRegression

    from training.guard import build_card

    train, holdout = points(600, 0), points(300, 1)
    model = LogisticRegression().fit(train[["x1", "x2"]].to_numpy(), train["target"])
    card = build_card(POINT_APP, model, train, holdout, "target")
    probabilities = model.predict_proba(holdout[["x1", "x2"]].to_numpy())[:, 1]
    expected = Calibration.fit(probabilities, (holdout["target"] == "yes").to_numpy(int))
    got = Calibration.from_dict(card.calibration)
    # The same knots, to the last bits: numpy may round a predict_proba of the same rows
    # differently in the last place, depending on how the array is laid out.
    assert got.rows == expected.rows and len(got.x) == len(expected.x)
    np.testing.assert_allclose(got.x, expected.x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.y, expected.y, rtol=0, atol=1e-12)
    assert GuardCard.from_custom_object(card.to_custom_object()).calibration == card.calibration


def test_cards_saved_before_calibration_are_still_read() -> None:
    schema = FeatureSchema.from_request(Point)
    frame = pd.DataFrame({"x1": [0.0, 1.0], "x2": [1.0, 2.0]})
    card = GuardCard("point", "binary", ("no", "yes"), schema, ReferenceStats.from_frame(frame, schema),
                     {"x1": [0.0, 1.0], "x2": [1.0, 2.0]}, {})
    old = card.to_custom_object()
    del old["calibration"]
    assert old["format"] == FORMAT == 1
    assert GuardCard.from_custom_object(old).calibration == {}
    assert GuardCard.from_custom_object(card.to_custom_object()) == card
