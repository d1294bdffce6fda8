"""The recorder folds a request's metric updates into one write per series: the counts and sums
on /metrics must be exactly those of observing every row one by one."""
from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitors import reasons
from monitors.input_checks import Violation
from monitors.metrics import Metrics
from monitors.tasks import Binary, OutputPolicy
from service.scoring.prediction import ROUTE_HEURISTIC, ROUTE_MODEL, Prediction
from service.scoring.recorder import MetricsRecorder, _Series
from service.worker.config import Settings

TASK = Binary(classes=("good", "bad"), decisions=("approve", "decline"), safe_default="bad")
OUT_OF_RANGE = Violation(reasons.INPUT_OUT_OF_RANGE, "age")
UNKNOWN = Violation(reasons.INPUT_UNKNOWN_CATEGORY, "home")


def _prediction(score: float, route: str, cause: str, seconds: float) -> Prediction:
    (out,) = TASK.from_model(np.array([score]), OutputPolicy())
    return Prediction("0" * 32, out, route, model_version="v", cause=cause, seconds=seconds)


def _requests() -> list[tuple[list[Prediction], list[list[Violation]]]]:
    """One-row requests and batches over both routes, causes, decisions, bucket edges and
    violations, as the pipeline answers them (one request's rows share its seconds)."""
    scores = [0.0, 0.05, 0.05000001, 0.3, 0.5, 0.97, 1.0]
    single = [
        ([_prediction(s, ROUTE_MODEL, reasons.NONE, 0.0004 * (i + 1))], [[]]) for i, s in enumerate(scores)
    ]
    single.append(([_prediction(0.8, ROUTE_HEURISTIC, reasons.INPUT_OUT_OF_RANGE, 0.00025)], [[OUT_OF_RANGE]]))
    rng = np.random.default_rng(3)
    batches = []
    for n in (2, 17, 100):
        per_row = float(rng.uniform(0.0001, 0.02))
        preds, found = [], []
        for k in range(n):
            heuristic = k % 5 == 0
            preds.append(_prediction(
                float(rng.choice(scores)) if k % 3 else float(rng.uniform()),
                ROUTE_HEURISTIC if heuristic else ROUTE_MODEL,
                reasons.INPUT_UNKNOWN_CATEGORY if heuristic else reasons.NONE,
                per_row,
            ))
            found.append([UNKNOWN, OUT_OF_RANGE] if heuristic else [])
        batches.append((preds, found))
    return single + batches


def record_one_by_one(m: Metrics, preds: list[Prediction], found: list[list[Violation]]) -> None:
    """What the recorder must add up to: the public API, one update per row and series."""
    for p, violations in zip(preds, found):
        m.requests.labels(p.route, p.cause).inc()
        m.request_duration.labels(p.route).observe(p.seconds)
        m.probability.labels(p.route).observe(p.output.score)
        m.decisions.labels(p.route, p.output.decision).inc()
        for v in violations:
            m.input_violations.labels(v.check, v.field).inc()


def _samples(registry: CollectorRegistry) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect() for s in family.samples
        if family.name.startswith("mlguard_") and not s.name.endswith("_created")
    }


def test_folded_updates_count_exactly_as_one_observation_per_row() -> None:
    folded, plain = CollectorRegistry(), CollectorRegistry()
    recorder = MetricsRecorder(Metrics(folded), TASK)
    m = Metrics(plain)
    cfg = Settings()
    for preds, found in _requests():
        recorder.record([{} for _ in preds], preds, found, cfg)
        record_one_by_one(m, preds, found)
    got, want = _samples(folded), _samples(plain)
    # Counts exact; sums equal up to the order floating-point additions were made in.
    assert {k for k, v in got.items() if v} == {k for k, v in want.items() if v}
    for key, value in want.items():
        if key[0].endswith("_sum"):
            assert got[key] == pytest.approx(value, rel=1e-12)
        else:
            assert got[key] == value, key
    assert want[("mlguard_requests_total", (("reason", "none"), ("route", "model")))] > 100


class _PublicOnly:
    """A child without prometheus_client's private attributes (a future release)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def inc(self, n: float = 1) -> None:
        self.calls.append(("inc", n))

    def observe(self, v: float) -> None:
        self.calls.append(("observe", v))


def test_without_the_private_attributes_the_public_calls_count() -> None:
    child = _PublicOnly()
    series = _Series(child)
    updates: list = []
    series.add(3, updates)
    series.observe([0.1, 0.2], updates)
    assert child.calls == [("inc", 3), ("observe", 0.1), ("observe", 0.2)]
    assert updates == []  # nothing left to write
