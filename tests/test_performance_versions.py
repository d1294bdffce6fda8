"""The live yardstick judges the model version served now: rows another version answered do not
count, and a new version starts with no verdict against it. On a real SQLite store, with the
monitoring process's monitor run in-process (the HTTP drill of performance routing is in
tests/test_store_http.py)."""
from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from apps.credit.app import CREDIT_APP
from monitors.metrics import PerformanceMetrics
from service.scoring.prediction import new_request_id
from service.store import Outcome, PredictionRecord, PredictionStore, open_store
from service.worker.config import parse
from service.worker.performance_monitor import PerformanceMonitor, judge

TASK = CREDIT_APP.task  # binary: outcome "bad" is the positive class
SETTINGS = parse("performance:\n  min_labels: 50\n  enter_after: 1\n  exit_after: 1\n")
ROWS = 200


def labelled(version: str, model_good: bool, seed: int) -> list[tuple[PredictionRecord, str]]:
    """ROWS answered by `version`, with the rules' shadow and an outcome: the rules rank the
    rows half right; the model ranks them all right (model_good) or all wrong."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(ROWS):
        bad = bool(i % 2)
        p_model = (0.9 if bad else 0.1) if model_good else (0.1 if bad else 0.9)
        p_rules = float(rng.uniform())
        answer = {"probability": p_model, "decision": "decline" if p_model >= 0.5 else "approve"}
        record = PredictionRecord(
            request_id=new_request_id(), ts=time.time(), app=CREDIT_APP.name, model_version=version,
            route="model", cause="none", model_output=answer, answer=answer,
            rules_output={"probability": p_rules, "decision": "approve"},
        )
        out.append((record, "bad" if bad else "good"))
    return out


@pytest.fixture
def store(tmp_path) -> Iterator[PredictionStore]:
    s = open_store(f"sqlite:///{tmp_path / 'predictions.db'}", CREDIT_APP.name)
    yield s
    s.close()


def save(store: PredictionStore, rows: list[tuple[PredictionRecord, str]]) -> None:
    store.write([r for r, _ in rows])
    store.add_outcomes([Outcome(r.request_id, outcome, time.time()) for r, outcome in rows])


def test_the_yardstick_pairs_only_the_served_versions_rows(store) -> None:
    save(store, labelled("v1", model_good=False, seed=1) + labelled("v2", model_good=True, seed=2))
    rows = store.labelled(10_000, 0.0)
    for version, worse in (("v1", True), ("v2", False)):
        delta = judge(TASK, rows, SETTINGS, None, version=version)["model_vs_rules"]
        assert delta["n"] == ROWS and delta["worse_than_rules"] is worse, (version, delta)
    assert judge(TASK, rows, SETTINGS, None, version="v3")["model_vs_rules"]["n"] == 0


def test_a_new_version_is_not_routed_on_the_old_versions_verdict(store) -> None:
    served = ["v1"]
    monitor = PerformanceMonitor(TASK, lambda: SETTINGS, store, PerformanceMetrics(CollectorRegistry()),
                                 lambda: None, lambda: served[0])
    save(store, labelled("v1", model_good=False, seed=3))
    monitor.check()
    assert monitor.below_rules() and monitor.report()["model_vs_rules"]["model_version"] == "v1"
    served[0] = "v2"  # swapped in: none of its answers are labelled yet
    monitor.check()
    report = monitor.report()
    assert not monitor.below_rules() and report["state"] == "insufficient labels"
    assert report["model_vs_rules"]["n"] == 0 and report["model_vs_rules"]["model_version"] == "v2"
