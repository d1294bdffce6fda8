"""Recording answered predictions: metrics and the sampled per-prediction log line."""
from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any

from monitors import reasons
from monitors.input_checks import Violation
from monitors.metrics import Metrics
from monitors.tasks import Task
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


class MetricsRecorder(Recorder):
    def __init__(
        self, metrics: Metrics, task: Task, drift: DriftFeed | None = None
    ) -> None:
        self.metrics = metrics
        # Which histogram the answered score goes to: the positive class's probability (binary),
        # the value (regression); a multiclass answer is counted by its decision only.
        self._score_metric = {"binary": metrics.probability, "regression": metrics.value}.get(task.kind)
        self._drift = drift  # served rows go to the drift window through it
        # Label lookups cost more than the increment itself: keep the children we have used.
        self._children: dict[tuple, Any] = {}
        for route, reason in KNOWN_REQUEST_LABELS:
            self._child(metrics.requests, route, reason)
        for route in ROUTES:
            for decision in task.labels:  # bounded: the plug-in's declared classes or decisions
                self._child(metrics.decisions, route, decision)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record(
        self,
        rows: list[dict[str, Any]],
        predictions: list[Prediction],
        violations: list[list[Violation]],
        cfg: Settings,
    ) -> None:
        m = self.metrics
        score_metric = self._score_metric
        # Decided once per call: the line is never built when the level or the ratio drops it.
        sample = cfg.logging.prediction_sample_ratio if prediction_log.isEnabledFor(logging.INFO) else 0.0
        for p, found in zip(predictions, violations):
            self._child(m.requests, p.route, p.cause).inc()
            self._child(m.request_duration, p.route).observe(p.seconds)
            out = p.output
            if score_metric is not None:
                self._child(score_metric, p.route).observe(out.score)
            if out.decision is not None:
                self._child(m.decisions, p.route, out.decision).inc()
            for v in found:
                self._child(m.input_violations, v.check, v.field).inc()
            if sample >= 1.0 or (sample > 0.0 and random.random() < sample):
                prediction_log.info(_log_line(p))
        if self._drift is not None:
            self._drift.offer(rows, predictions, cfg)

    def record_model_call(self, outcome: ModelOutcome) -> None:
        if outcome.failure != reasons.MODEL_OVERLOADED:  # an overloaded call never ran
            self.metrics.model_duration.observe(outcome.seconds)


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
