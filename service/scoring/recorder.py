"""Recording answered predictions: metrics and the sampled per-prediction log line.

Runs on the request path before the answer leaves (a scrape right after an answer must count it,
from whichever worker), so it is written for cost: one label lookup per distinct label set of a
request rather than per row, and counts folded into one write per series (`_Series`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from bisect import bisect_left
from collections import Counter
from math import isnan
from typing import Any

from monitors import reasons
from monitors.input_checks import Violation
from monitors.metrics import Metrics
from monitors.tasks import Task
from service.scoring.metric_writes import Update, write
from service.scoring.model_call import ModelOutcome
from service.scoring.pipeline import Recorder
from service.scoring.prediction import ROUTE_DEFAULT, ROUTE_HEURISTIC, ROUTE_MODEL, Prediction
from service.worker.config import Settings
from service.worker.drift_feed import DriftFeed
from service.worker.logs import PREDICTION_LOGGER

ROUTES = (ROUTE_MODEL, ROUTE_HEURISTIC, ROUTE_DEFAULT)

prediction_log = logging.getLogger(PREDICTION_LOGGER)

# Every (route, reason) the pipeline can produce, created at 0 when a worker starts: rate() and
# increase() in the alerts then see the first model.error, not only the second.
KNOWN_REQUEST_LABELS = (
    (ROUTE_MODEL, reasons.NONE),
    *((ROUTE_HEURISTIC, code) for code in reasons.ALL if code != reasons.HEURISTIC_ERROR),
    (ROUTE_DEFAULT, reasons.HEURISTIC_ERROR),
)


class _Series:
    """One labelled counter or histogram, written with the fewest value updates.

    prometheus_client's `inc()` and `observe()` check, on every call, what a bound child never
    changes (observability, exemplars), and `observe()` scans the buckets in turn; in multiprocess
    mode each value update is also a locked mmap write. Here a counter gains n in one update, and
    a histogram's observations of one request are binned first, then written once per bucket hit
    and once to the sum: the same counts and sum as observing them one by one (tested), for ~a
    third of the cost on a one-row request and ~1/20 on a 100-row batch. The updates are queued,
    and a request's are written together (service/scoring/metric_writes.py).
    """

    def __init__(self, child: Any) -> None:
        self._public = child
        self._value = getattr(child, "_value", None)  # a counter's
        self._sum = getattr(child, "_sum", None)  # a histogram's
        self._buckets = getattr(child, "_buckets", None)
        self._bounds = list(getattr(child, "_upper_bounds", ()))
        # Private attributes of prometheus_client (pinned in constraints.txt): if a release
        # renames them, the public calls below still count right, only slower.
        self._fast = self._value is not None or (self._sum is not None and self._buckets is not None)

    def add(self, n: int, updates: list[Update]) -> None:
        """Count n more: queued in `updates` (metric_writes.write applies them), or at once."""
        if not self._fast:
            self._public.inc(n)
        else:
            updates.append((self._value, n))

    def observe(self, values: list[float], updates: list[Update]) -> None:
        """Observe each of `values`: binned and queued in `updates`, or at once."""
        if not self._fast:
            for v in values:
                self._public.observe(v)
            return
        if len(values) == 1:
            (v,) = values
            updates.append((self._sum, v))
            if not isnan(v):  # a NaN lands in no bucket, as observe() has it
                updates.append((self._buckets[bisect_left(self._bounds, v)], 1))
            return
        hits = Counter(bisect_left(self._bounds, v) for v in values if not isnan(v))
        updates.append((self._sum, sum(values)))
        for bucket, n in hits.items():
            updates.append((self._buckets[bucket], n))


# requests, request duration, the score's histogram and decisions (None where the task has none)
_RowSeries = tuple[_Series, _Series, "_Series | None", "_Series | None"]


class MetricsRecorder(Recorder):
    def __init__(
        self, metrics: Metrics, task: Task, drift: DriftFeed | None = None
    ) -> None:
        self.metrics = metrics
        # Which histogram the answered score goes to: the positive class's probability (binary),
        # the value (regression); a multiclass answer is counted by its decision only.
        self._score_metric = {"binary": metrics.probability, "regression": metrics.value}.get(task.kind)
        self._drift = drift  # served rows go to the drift window through it
        # Label lookups cost more than the update itself: keep the series we have used.
        self._series: dict[tuple, _Series] = {}
        self._rows: dict[tuple[str, str, str | None], _RowSeries] = {}
        self._model_duration = _Series(metrics.model_duration)
        for route, reason in KNOWN_REQUEST_LABELS:
            self._get(metrics.requests, route, reason)
        for route in ROUTES:
            for decision in task.labels:  # bounded: the plug-in's declared classes or decisions
                self._get(metrics.decisions, route, decision)

    def _one_row(self, route: str, cause: str, decision: str | None) -> _RowSeries:
        """The series one answered row writes, found with one lookup (they are bounded: routes,
        reason codes and the plug-in's decisions)."""
        key = (route, cause, decision)
        found = self._rows.get(key)
        if found is None:
            m = self.metrics
            found = self._rows[key] = (
                self._get(m.requests, route, cause),
                self._get(m.request_duration, route),
                self._get(self._score_metric, route) if self._score_metric is not None else None,
                self._get(m.decisions, route, decision) if decision is not None else None,
            )
        return found

    def _get(self, metric: Any, *labels: str) -> _Series:
        key = (id(metric), *labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(metric.labels(*labels))
        return series

    def record(
        self,
        rows: list[dict[str, Any]],
        predictions: list[Prediction],
        violations: list[list[Violation]],
        cfg: Settings,
    ) -> None:
        if len(predictions) == 1:  # the common case, without the grouping below
            (p,), (found,) = predictions, violations
            out = p.output
            requests, duration, score, decisions = self._one_row(p.route, p.cause, out.decision)
            updates: list[Update] = []
            requests.add(1, updates)
            duration.observe([p.seconds], updates)
            if score is not None:
                score.observe([out.score], updates)
            if decisions is not None:
                decisions.add(1, updates)
            for v in found:
                self._get(self.metrics.input_violations, v.check, v.field).add(1, updates)
            write(updates)
        else:
            self._record_many(predictions, violations)
        # Decided once per call: the line is never built when the level or the ratio drops it.
        sample = cfg.logging.prediction_sample_ratio if prediction_log.isEnabledFor(logging.INFO) else 0.0
        if sample > 0.0:
            for p in predictions:
                if sample >= 1.0 or random.random() < sample:
                    prediction_log.info(_log_line(p))
        if self._drift is not None:
            self._drift.offer(rows, predictions, cfg)

    def _record_many(self, predictions: list[Prediction], violations: list[list[Violation]]) -> None:
        """A batch: rows grouped by label set, each series written once."""
        m, scored = self.metrics, self._score_metric is not None
        requests: Counter = Counter()
        decisions: Counter = Counter()
        seconds: dict[str, list[float]] = {}
        scores: dict[str, list[float]] = {}
        for p in predictions:
            requests[p.route, p.cause] += 1
            seconds.setdefault(p.route, []).append(p.seconds)
            if scored:
                scores.setdefault(p.route, []).append(p.output.score)
            if p.output.decision is not None:
                decisions[p.route, p.output.decision] += 1
        found = Counter((v.check, v.field) for row in violations for v in row)
        updates: list[Update] = []
        for labels, n in requests.items():
            self._get(m.requests, *labels).add(n, updates)
        for route, values in seconds.items():
            self._get(m.request_duration, route).observe(values, updates)
        for route, values in scores.items():
            self._get(self._score_metric, route).observe(values, updates)
        for labels, n in decisions.items():
            self._get(m.decisions, *labels).add(n, updates)
        for labels, n in found.items():
            self._get(m.input_violations, *labels).add(n, updates)
        write(updates)

    def record_model_call(self, outcome: ModelOutcome) -> None:
        if outcome.failure != reasons.MODEL_OVERLOADED:  # an overloaded call never ran
            updates: list[Update] = []
            self._model_duration.observe([outcome.seconds], updates)
            write(updates)


def _log_line(p: Prediction) -> str:
    return json.dumps(
        {
            "event": "prediction",
            "ts": round(time.time(), 3),
            "pid": os.getpid(),  # which worker answered
            "request_id": p.request_id,
            "route": p.route,
            **p.output.fields,
            "reasons": p.reasons,
            "model_version": p.model_version,
            "latency_ms": round(p.seconds * 1000, 3),
        },
        separators=(",", ":"),
    )
