"""Drift building blocks without a server: policy hysteresis, window bounds, category buckets,
the check on frames, the monitor's failure handling and a worker's feed."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from apps.credit.app import CREDIT_APP
from apps.credit.data import load_credit_data, split_data
from monitors.drift.buckets import OTHER, CategoryBuckets
from monitors.drift.check import DriftCheck
from monitors.drift.monitor import DriftMonitor
from monitors.drift.policy import DriftPolicy, Hysteresis
from monitors.drift.window import DriftWindow, WindowRow, agreement_ratio
from monitors.metrics import DriftMetrics
from service.scoring.prediction import Prediction
from service.worker.config import DriftConfig, Settings
from service.worker.drift_feed import DriftFeed

CREDIT_FEATURES = CREDIT_APP.features


@pytest.fixture(scope="module")
def split():
    return split_data(load_credit_data())


def _policy(enter: int = 2, exit_: int = 3, on_error: str = "keep") -> DriftPolicy:
    return DriftPolicy(lambda: Hysteresis(enter, exit_, on_error))


def test_policy_enters_only_after_consecutive_drifted_checks() -> None:
    policy = _policy(enter=2)
    for verdict in (True, False, True):  # interrupted streak: never two in a row
        policy.record_check(verdict)
    assert not policy.drifted
    policy.record_check(True)
    assert policy.drifted and policy.state.name == "drifted"


def test_policy_exits_only_after_consecutive_clean_checks() -> None:
    policy = _policy(enter=1, exit_=3)
    policy.record_check(True)
    for verdict in (False, False, True, False, False):
        policy.record_check(verdict)
    assert policy.drifted  # the drifted check reset the clean streak
    policy.record_check(False)
    assert not policy.drifted


def test_policy_reports_transitions_to_listeners() -> None:
    policy = _policy(enter=1, exit_=1)
    seen: list[tuple[str, str]] = []
    policy.on_transition(lambda old, new: seen.append((old, new)))
    policy.record_check(True)
    policy.record_check(False)
    assert seen == [("clear", "drifted"), ("drifted", "clear")]


@pytest.mark.parametrize(("on_error", "still_drifted"), [("keep", True), ("clear", False)])
def test_policy_on_error(on_error: str, still_drifted: bool) -> None:
    policy = _policy(enter=1, on_error=on_error)
    policy.record_check(True)
    policy.record_error()
    assert policy.drifted is still_drifted


def test_window_keeps_only_the_newest_rows() -> None:
    window = DriftWindow(5)
    window.extend(WindowRow({"x": i}, None, None) for i in range(12))
    assert len(window) == 5
    assert [r.features["x"] for r in window.snapshot()] == [7, 8, 9, 10, 11]
    window.resize(3)
    assert [r.features["x"] for r in window.snapshot()] == [9, 10, 11]


def test_agreement_ratio_counts_only_model_routed_rows() -> None:
    rows = [WindowRow({}, 0.2, True), WindowRow({}, 0.9, False), WindowRow({}, None, None)]
    assert agreement_ratio(rows) == 0.5
    assert agreement_ratio([WindowRow({}, None, None)]) is None


def test_buckets_pool_rare_unseen_and_missing_categories() -> None:
    reference = pd.Series(["a"] * 60 + ["b"] * 38 + ["rare"] * 1 + [None] * 1)
    buckets = CategoryBuckets(reference, window_size=100)  # 5 expected per cell needs a 5% share
    assert buckets.kept == {"a", "b"}
    mapped = buckets.apply(pd.Series(["a", "rare", None, "never-seen", "b"]))
    assert list(mapped) == ["a", buckets.other, buckets.other, buckets.other, "b"]
    # "rare" + missing are 2% of the reference: too rare alone, so they join the smallest category
    assert buckets.other == "b"


def test_buckets_keep_their_own_cell_when_it_is_large_enough() -> None:
    reference = pd.Series(["a"] * 50 + ["b"] * 40 + ["r1"] * 5 + ["r2"] * 5)
    pooled = CategoryBuckets(reference, window_size=80)  # r1, r2 under 5/80 each, 10% together
    assert pooled.kept == {"a", "b"} and pooled.other == OTHER
    folded = CategoryBuckets(reference, window_size=30)  # 10% pooled is under 5/30 too
    assert folded.other == "b"


def test_check_on_frames(split) -> None:
    names = CREDIT_FEATURES.names
    check = DriftCheck(CREDIT_FEATURES, split.train[names], 300, 0.001, 0.001, 0.3)
    normal = check.run(split.validation[names].iloc[:300])
    assert set(normal.features) == set(names)
    assert {c.method for c in normal.features.values()} == {"ks", "chisquare"}
    assert normal.features["home"].method == "chisquare" and normal.features["age"].method == "ks"
    assert not normal.dataset_drift
    shifted = split.validation[names].iloc[:300].copy()
    for column in ("income", "assets", "debt", "amount", "price"):
        shifted[column] = shifted[column] * 1.5
    drifted = check.run(shifted)
    assert drifted.dataset_drift and drifted.drift_share >= 0.3
    assert {"amount", "price"} <= set(drifted.drifted_features)
    assert all(c.drifted == (c.score <= c.threshold) for c in drifted.features.values())


def test_unseen_categories_alone_do_not_zero_the_p_value(split) -> None:
    names = CREDIT_FEATURES.names
    check = DriftCheck(CREDIT_FEATURES, split.train[names], 300, 0.001, 0.001, 0.3)
    window = split.validation[names].iloc[:300].copy()
    window.loc[window.index[:2], "home"] = "castle"  # two rows of a category never seen
    assert check.run(window).features["home"].score > 0.001


def _monitor(split, registry: CollectorRegistry, **overrides) -> DriftMonitor:
    cfg = DriftConfig(window_size=300, min_samples=200, **overrides)
    names = CREDIT_FEATURES.names
    return DriftMonitor(CREDIT_FEATURES, split.train[names], lambda: cfg, DriftMetrics(registry))


def _rows(frame: pd.DataFrame) -> list[WindowRow]:
    return [WindowRow(r, None, None) for r in frame.to_dict("records")]


def test_monitor_waits_for_min_samples_then_judges(split) -> None:
    registry = CollectorRegistry()
    monitor = _monitor(split, registry, enter_after=1)
    monitor.ingest(_rows(split.validation[CREDIT_FEATURES.names].iloc[:100]))
    assert monitor.check_once() == "insufficient_data"
    assert monitor.status()["dataset_drift"] is False and monitor.status()["checked_at"] is None
    monitor.ingest(_rows(split.validation[CREDIT_FEATURES.names].iloc[100:300]))
    assert monitor.check_once() == "no_drift"
    assert registry.get_sample_value("mlguard_drift_checks_total", {"outcome": "no_drift"}) == 1
    assert registry.get_sample_value("mlguard_drift_window_rows") == 300
    status = monitor.status()
    assert status["checked_at"] and set(status["features"]) == set(CREDIT_FEATURES.names)
    assert status["routing_to_fallback"] is False


def test_monitor_counts_a_failing_check_and_applies_on_error(split, monkeypatch) -> None:
    registry = CollectorRegistry()
    monitor = _monitor(split, registry, enter_after=1, on_error="clear")
    monitor.policy.record_check(True)
    assert monitor.routing_to_fallback()
    monitor.ingest(_rows(split.validation[CREDIT_FEATURES.names].iloc[:300]))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(DriftCheck, "run", broken)
    assert monitor.check_once() == "error"
    assert registry.get_sample_value("mlguard_drift_checks_total", {"outcome": "error"}) == 1
    assert not monitor.routing_to_fallback()  # on_error=clear: the model answers again
    assert registry.get_sample_value("mlguard_drift_detected") == 0


def test_alert_action_never_routes(split) -> None:
    monitor = _monitor(split, CollectorRegistry(), enter_after=1, action="alert")
    monitor.policy.record_check(True)
    assert monitor.policy.drifted and not monitor.routing_to_fallback()


class _DeadDrift:
    """A drift process that cannot be reached."""

    @property
    def to_async(self):
        raise ConnectionError("drift process gone")


class _LiveDrift:
    def __init__(self, routing: bool) -> None:
        self.routing = routing
        self.received: list[list[dict]] = []
        self.predictions: list[list] = []
        self.versions: list[str | None] = []
        self.to_async = self

    async def ingest(self, rows, predictions, version=None):
        self.received.append(rows)
        self.predictions.append(predictions)
        self.versions.append(version)
        return {"routing_to_fallback": self.routing, "policy_state": "drifted"}


def _settings(**drift) -> Settings:
    return Settings(drift=DriftConfig(**drift))


def _prediction(route: str = "model") -> Prediction:
    return Prediction("x", CREDIT_APP.task.output(0.3, 0.5), route, model_version="v")


def test_feed_sends_request_rows_and_model_scores_and_keeps_the_verdict() -> None:
    cfg = _settings()
    live = _LiveDrift(routing=True)
    feed = DriftFeed(lambda: live, lambda: "m:1", lambda: cfg, lambda: None)
    # Rows go as clients sent them (the drift process derives the features); only a
    # model-routed row carries its score, a rules-routed one None.
    feed.offer([{"a": 1, "extra": 2}, {"a": 3}], [_prediction(), _prediction("heuristic")], cfg)
    asyncio.run(feed.flush())
    assert live.received == [[{"a": 1, "extra": 2}, {"a": 3}]]
    assert live.versions == ["m:1"]  # the version served, so the drift process can follow it
    assert live.predictions == [[0.3, None]]
    assert feed.drift_active(cfg) is True
    assert feed.drift_active(_settings(action="alert")) is False


def test_feed_buffers_no_more_rows_than_the_window_keeps() -> None:
    cfg = _settings(window_size=100, min_samples=50)
    live = _LiveDrift(routing=False)
    feed = DriftFeed(lambda: live, lambda: "m:1", lambda: cfg, lambda: None)
    p = _prediction()
    for i in range(250):
        feed.offer([{"a": i}], [p], cfg)
    asyncio.run(feed.flush())
    assert [r["a"] for r in live.received[0]] == list(range(150, 250))  # the newest 100, in order


@pytest.mark.parametrize(("on_error", "active"), [("keep", True), ("clear", False)])
def test_feed_with_a_dead_drift_process(on_error: str, active: bool) -> None:
    cfg = _settings(on_error=on_error)
    errors: list[int] = []
    client = SimpleNamespace(current=_LiveDrift(routing=True))
    feed = DriftFeed(lambda: client.current, lambda: "m:1", lambda: cfg, lambda: errors.append(1))
    asyncio.run(feed.flush())  # one good contact: the verdict is "route"
    client.current = _DeadDrift()
    asyncio.run(feed.flush())
    asyncio.run(feed.flush())
    assert feed.drift_active(cfg) is active
    assert errors == [1]  # counted once per check interval, not per flush


def test_config_rejects_a_window_that_can_never_reach_min_samples() -> None:
    from service.worker.config import ConfigError, parse

    with pytest.raises(ConfigError, match="min_samples"):
        parse("drift:\n  window_size: 100\n  min_samples: 200\n")
    with pytest.raises(ConfigError, match="on_error"):
        parse("drift:\n  on_error: maybe\n")
    assert parse("drift:\n  action: alert\n").drift.action == "alert"
