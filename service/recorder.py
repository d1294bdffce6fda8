"""Recording answered predictions: metrics and the sampled per-prediction log line."""
from __future__ import annotations

import json
import logging
import random
from typing import Any

from monitors import reasons
from monitors.input_checks import Violation
from monitors.metrics import Metrics
from service.config import Settings
from service.model_call import ModelOutcome
from service.pipeline import Recorder
from service.prediction import Prediction

prediction_log = logging.getLogger("mlguard.predictions")


class MetricsRecorder(Recorder):
    def __init__(self, metrics: Metrics, settings: Any) -> None:
        self.metrics = metrics
        self._settings = settings  # () -> Settings
        # Label lookups cost more than the increment itself: keep the children we have used.
        self._children: dict[tuple, Any] = {}

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
    ) -> None:
        m = self.metrics
        cfg: Settings = self._settings()
        sample = cfg.logging.prediction_sample_ratio
        for p, found in zip(predictions, violations):
            self._child(m.requests, p.route, p.cause).inc()
            self._child(m.request_duration, p.route).observe(p.seconds)
            self._child(m.probability, p.route).observe(p.probability)
            self._child(m.decisions, p.route, p.decision).inc()
            for v in found:
                self._child(m.input_violations, v.check, v.field).inc()
            if sample >= 1.0 or (sample > 0.0 and random.random() < sample):
                prediction_log.info(_log_line(p))

    def record_model_call(self, outcome: ModelOutcome) -> None:
        if outcome.failure != reasons.MODEL_OVERLOADED:  # an overloaded call never ran
            self.metrics.model_duration.observe(outcome.seconds)


def _log_line(p: Prediction) -> str:
    return json.dumps(
        {
            "event": "prediction",
            "request_id": p.request_id,
            "route": p.route,
            "reasons": p.reasons,
            "model_version": p.model_version,
            "latency_ms": round(p.seconds * 1000, 3),
            "probability": round(p.probability, 6),
        },
        separators=(",", ":"),
    )
