"""The drift check's false-alarm and detection rates on this data (issue 4, point 4).

Windows are drawn from held-out rows (validation + test, never seen in training) and judged
against the whole training split with the shipped methods: KS p <= 0.001 for numeric columns,
chi-square p <= 0.001 for categorical ones, dataset drift at a drifted-feature share of 0.3.
Run with -s to print the measured rates (docs/DRIFT.md records them).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from apps.credit.app import CREDIT_APP
from apps.credit.data import load_credit_data, split_data
from monitors.drift.check import DriftCheck
from monitors.drift.monitor import DriftMonitor
from monitors.drift.window import DriftWindow, WindowRow, features_frame, row_key
from monitors.metrics import DriftMetrics
from service.worker.config import DriftConfig

CREDIT_FEATURES = CREDIT_APP.features
NAMES = CREDIT_FEATURES.names
WINDOWS = 25  # per scenario; the issue asks for at least 20 in-distribution windows
MONEY = ("income", "assets", "debt", "amount", "price")
DEFAULTS = DriftConfig()


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    split = split_data(load_credit_data())
    held_out = pd.concat([split.validation, split.test], ignore_index=True)
    return split.train[NAMES], held_out


def _check(train: pd.DataFrame, window: int) -> DriftCheck:
    return DriftCheck(
        CREDIT_FEATURES, train, window, DEFAULTS.numeric_p_value, DEFAULTS.categorical_p_value,
        DEFAULTS.share_threshold,
    )


def _windows(held_out: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    """Random held-out windows, each without repeated rows, each from its own seed."""
    return [held_out[NAMES].sample(size, random_state=seed) for seed in range(WINDOWS)]


def _inflated(window: pd.DataFrame) -> pd.DataFrame:
    out = window.copy()
    for column in MONEY:
        out[column] = out[column] * 1.5
    return out


def _population(held_out: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """Mostly part-time applicants with past records: a population the model was not tuned on."""
    part_time = held_out[held_out.job == "partime"][NAMES]
    records = held_out[held_out.records == "yes"][NAMES]
    half = size // 2
    return pd.concat(
        [part_time.sample(half, replace=True, random_state=seed),
         records.sample(size - half, replace=True, random_state=seed + 1000)]
    )


@pytest.mark.parametrize("size", [300, DEFAULTS.window_size])
def test_in_distribution_windows_rarely_flag_drift(data, size: int) -> None:
    train, held_out = data
    check = _check(train, size)
    results = [check.run(w) for w in _windows(held_out, size)]
    rate = np.mean([r.dataset_drift for r in results])
    feature_rate = np.mean([len(r.drifted_features) > 0 for r in results])
    print(f"\nwindow {size}: dataset false alarms {rate:.1%}, windows with any drifted feature "
          f"{feature_rate:.1%}, median check {np.median([r.seconds for r in results]) * 1000:.0f} ms")
    assert len(results) >= 20
    assert rate <= 0.05


@pytest.mark.parametrize("size", [300, DEFAULTS.window_size])
def test_monetary_inflation_is_flagged_within_two_checks(data, size: int) -> None:
    train, held_out = data
    check = _check(train, size)
    flagged = [check.run(_inflated(w)).dataset_drift for w in _windows(held_out, size)]
    print(f"\nwindow {size}: money x1.5 flagged in {sum(flagged)}/{len(flagged)} windows")
    assert all(flagged)  # flagged at the first check after the window fills


@pytest.mark.parametrize("size", [300, DEFAULTS.window_size])
def test_population_change_is_flagged(data, size: int) -> None:
    train, held_out = data
    check = _check(train, size)
    results = [check.run(_population(held_out, size, seed)) for seed in range(WINDOWS)]
    print(f"\nwindow {size}: population change flagged in {sum(r.dataset_drift for r in results)}"
          f"/{len(results)} windows")
    assert all(r.dataset_drift for r in results)
    assert all({"job", "records"} <= set(r.drifted_features) for r in results)


@pytest.mark.parametrize("size", [300, DEFAULTS.window_size])
def test_population_change_is_flagged_in_a_window_of_distinct_rows(data, size: int) -> None:
    """The window counts an identical row once, so the population above (drawn with replacement
    from 186 part-time applicants) reaches the check without its repeats. Its repeats were part of
    what the test above detects: a clump of identical values is itself a KS signal against a
    training split without duplicates (2 in 2,672 rows). As distinct rows, job and records are
    always flagged, and the 0.3 share is reached in most windows (docs/DRIFT.md)."""
    train, held_out = data
    check = _check(train, size)
    distinct, results = [], []
    for seed in range(WINDOWS):
        window = DriftWindow(size, key=row_key(NAMES))
        window.extend(WindowRow(r, None, None) for r in _population(held_out, size, seed).to_dict("records"))
        rows = window.snapshot()
        distinct.append(len(rows))
        results.append(check.run(features_frame(rows, NAMES)))
    rate = np.mean([r.dataset_drift for r in results])
    print(f"\nwindow {size}: {min(distinct)}-{max(distinct)} distinct rows, population change flagged "
          f"in {sum(r.dataset_drift for r in results)}/{len(results)} windows")
    assert max(distinct) < size  # the draws did repeat rows, and the window dropped the repeats
    assert all({"job", "records"} <= set(r.drifted_features) for r in results)
    assert rate >= 0.7


@pytest.mark.parametrize("size", [300, DEFAULTS.window_size])
def test_amount_shift_raises_that_features_verdict(data, size: int) -> None:
    train, held_out = data
    check = _check(train, size)
    results = []
    for window in _windows(held_out, size):
        shifted = window.copy()
        shifted["amount"] = shifted["amount"] * 1.15
        results.append(check.run(shifted))
    caught = sum(r.features["amount"].drifted for r in results)
    dataset = sum(r.dataset_drift for r in results)
    print(f"\nwindow {size}: amount x1.15 raised the amount verdict in {caught}/{len(results)} windows"
          f" (dataset drift in {dataset})")
    assert caught == len(results)
    assert dataset == 0  # one feature of 13 stays under the 0.3 share: verdict, not routing


def test_drift_routes_within_two_checks_and_the_feature_metric_rises(data) -> None:
    """Through the monitor: the policy (enter_after=2) and the per-feature metric."""
    train, held_out = data
    registry = CollectorRegistry()
    cfg = DriftConfig(window_size=300, min_samples=300, enter_after=2)
    monitor = DriftMonitor(CREDIT_FEATURES, train, lambda: cfg, DriftMetrics(registry))
    normal, shifted = _windows(held_out, 300)[:2]
    monitor.ingest(WindowRow(r, None, None) for r in normal.to_dict("records"))
    assert monitor.check_once() == "no_drift"
    amount_up = shifted.copy()
    amount_up["amount"] = amount_up["amount"] * 1.15
    monitor.ingest(WindowRow(r, None, None) for r in amount_up.to_dict("records"))
    assert monitor.check_once() == "no_drift"
    assert registry.get_sample_value("mlguard_feature_drifted", {"feature": "amount"}) == 1
    assert registry.get_sample_value("mlguard_feature_drifted", {"feature": "age"}) == 0
    monitor.ingest(WindowRow(r, None, None) for r in _inflated(shifted).to_dict("records"))
    assert monitor.check_once() == "drift" and not monitor.routing_to_fallback()
    assert monitor.check_once() == "drift" and monitor.routing_to_fallback()
    assert registry.get_sample_value("mlguard_drift_detected") == 1
    assert registry.get_sample_value("mlguard_drift_share") >= 0.3
