"""Live performance on labels, judged in the monitoring process (the drift process).

Every `performance.check_interval_s`, the monitor reads the labelled window from the store (the
last `performance.window` predictions with an outcome, made within `performance.max_age_days`),
and computes:
- the realized metrics of the answers, per route that answered (model, heuristic, default) and
  per model version;
- the live yardstick: model minus rules on the rows where both scored (the model's answers with
  the rules' shadow, or the rules' answers with the model's shadow), with a paired-bootstrap
  interval;
- for binary models with a calibration in their guard card, the label-free estimate (CBPE) of the
  model's accuracy and ROC AUC on the same rows, beside the realized values.
The yardstick's verdict ("worse than the rules with confidence") feeds the same hysteresis as the
drift policy; the workers route on it when `performance.action` is `route`.
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from monitors.drift.policy import ClearState, DriftPolicy, Hysteresis
from monitors.metrics import PerformanceMetrics
from monitors.performance import (
    DEFAULT_METRIC,
    METRICS,
    Calibration,
    below_rules,
    estimate,
    paired_delta,
    realized,
)
from monitors.periodic import PeriodicThread
from monitors.tasks import Task
from service.scoring.prediction import ROUTE_DEFAULT, ROUTE_HEURISTIC, ROUTE_MODEL
from service.worker.config import Settings

log = logging.getLogger("mlguard.performance")

ROUTES = (ROUTE_MODEL, ROUTE_HEURISTIC, ROUTE_DEFAULT)
DAY_S = 86_400.0


def score_of(task: Task, fields: dict[str, Any] | None) -> Any:
    """What the metrics compare with the outcome: the positive probability, the class, the value."""
    if fields is None:
        return None
    return {"binary": fields.get("probability"), "multiclass": fields.get("decision"),
            "regression": fields.get("value")}[task.kind]


def outcome_of(task: Task, outcome: Any) -> Any:
    """The outcome as the metrics take it: 1/0 for the positive class (binary), as is otherwise."""
    if task.kind == "binary":
        return 1 if outcome == task.classes[1] else 0
    return float(outcome) if task.kind == "regression" else str(outcome)


def judge(task: Task, rows: Sequence[Any], cfg: Settings, calibration: Calibration | None,
          version: str | None = None) -> dict[str, Any]:
    """The performance report of one labelled window (rows: the store's LabelledRow).

    The yardstick (model minus rules) and the label-free estimate judge `version`, the version
    served now, on its own rows only (all rows when None): a version swapped in must not be
    routed to the rules on the answers of the one it replaced, nor be estimated with its
    calibration on another's probabilities. The realized metrics per route and per version
    cover the whole window."""
    perf = cfg.performance
    threshold = cfg.decision.threshold
    metric = perf.metric or DEFAULT_METRIC[task.kind]
    y_all = [outcome_of(task, r.outcome) for r in rows]

    by_route: dict[str, Any] = {}
    for route in ROUTES:
        picked = [i for i, r in enumerate(rows) if r.route == route]
        if picked:
            by_route[route] = {
                "rows": len(picked),
                **realized(task.kind, np.array([y_all[i] for i in picked]),
                           np.array([score_of(task, rows[i].answer) for i in picked]), threshold),
            }

    by_version: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r.model_output is not None:
            by_version[r.model_version].append(i)
    versions = {
        version: {"rows": len(picked),
                  **realized(task.kind, np.array([y_all[i] for i in picked]),
                             np.array([score_of(task, rows[i].model_output) for i in picked]),
                             threshold)}
        for version, picked in by_version.items()
    }

    paired = [i for i, r in enumerate(rows) if r.model_output is not None and r.rules_output is not None
              and (version is None or r.model_version == version)]
    y = np.array([y_all[i] for i in paired])
    model = np.array([score_of(task, rows[i].model_output) for i in paired])
    rules = np.array([score_of(task, rows[i].rules_output) for i in paired])
    delta = paired_delta(task.kind, metric, y, model, rules, threshold, perf.confidence)
    verdict = below_rules(delta, delta.n, perf.min_labels)

    estimated = None
    if calibration is not None and len(paired):
        estimated = {
            "estimated": estimate(model, threshold, calibration),
            "realized": realized(task.kind, y, model, threshold),
            "rows": len(paired),
        }
    delays = [r.received_at - r.ts for r in rows]
    return {
        "labelled_rows": len(rows),
        "metric": metric,
        "by_route": by_route,
        "by_model_version": versions,
        "model_vs_rules": {**delta.to_dict(), "worse_than_rules": verdict, "model_version": version},
        "estimate_vs_realized": estimated,
        "label_delay_s": {
            "median": float(np.median(delays)) if delays else None,
            "p90": float(np.quantile(delays, 0.9)) if delays else None,
        },
    }


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


class PerformanceMonitor:
    """Owned by the monitoring process: `start()` once, `stop()` once."""

    def __init__(
        self,
        task: Task,
        settings: Callable[[], Settings],
        store: Any,  # a PredictionStore (service/store/): labelled(), window_counts()
        metrics: PerformanceMetrics,
        calibration: Callable[[], Calibration | None],  # of the model version served now
        version: Callable[[], str | None],  # the model version served now
    ) -> None:
        self.task = task
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._calibration = calibration
        self._version = version
        self._judged: str | None = None  # the version the policy's state is about
        self.policy = DriftPolicy(self._hysteresis)
        self.policy.on_transition(self._on_transition)
        self._report: dict[str, Any] = {"state": "no check yet"}
        self._thread = PeriodicThread(
            "mlguard-performance", self.check, lambda: self._settings().performance.check_interval_s
        )

    def _hysteresis(self) -> Hysteresis:
        perf = self._settings().performance
        return Hysteresis(perf.enter_after, perf.exit_after, "keep")

    def _on_transition(self, old: str, new: str) -> None:
        # The drift policy's states, reused: "drifted" here means "worse than the rules".
        log.warning("live performance: the model is %s the rules",
                    "worse than" if new == "drifted" else "no longer worse than")
        self._metrics.below_rules.set(1 if new == "drifted" else 0)

    def below_rules(self) -> bool:
        """The policy's verdict: the model is worse than the rules (after enter_after checks)."""
        return self.policy.drifted

    def report(self) -> dict[str, Any]:
        """What GET /monitoring/performance shows."""
        cfg = self._settings()
        return {
            **self._report,
            "action": cfg.performance.action,
            "below_rules": self.policy.drifted,
            "routing_to_fallback": self.policy.drifted and cfg.performance.action == "route",
            "window": {"labelled": cfg.performance.window, "max_age_days": cfg.performance.max_age_days,
                       "min_labels": cfg.performance.min_labels},
        }

    def check(self) -> None:
        cfg = self._settings()
        if not cfg.performance.enabled:
            self._report = {"state": "disabled"}
            return
        started = time.time()
        since = started - cfg.performance.max_age_days * DAY_S
        try:
            rows = self._store.labelled(cfg.performance.window, since)
            predictions, labelled = self._store.window_counts(since)
            version = self._version()
            report = judge(self.task, rows, cfg, self._calibration(), version)
        except Exception:  # a store outage or a bad row: counted, the verdict stays
            log.warning("performance check failed", exc_info=True)
            self._metrics.checks.labels("error").inc()
            self.policy.record_error()
            return
        if version != self._judged:  # a version swapped in starts with no verdict against it
            if self._judged is not None and self.policy.drifted:
                self.policy.move_to(ClearState)
            self._judged = version
        verdict = report["model_vs_rules"]["worse_than_rules"]
        if verdict is None:
            self._metrics.checks.labels("insufficient").inc()
        else:
            self._metrics.checks.labels("ok").inc()
            self.policy.record_check(verdict)
        report["coverage"] = {"predictions": predictions, "labelled": labelled,
                              "ratio": labelled / predictions if predictions else None}
        report["checked_at"] = started
        report["state"] = "insufficient labels" if verdict is None else (
            "below rules" if self.policy.drifted else "not below rules")
        self._publish(report)
        self._report = report

    def _publish(self, report: dict[str, Any]) -> None:
        m = self._metrics
        # Undefined now is NaN, never the last defined value: a stale negative bound would keep
        # an alert firing on evidence that is gone.
        m.labelled.set(report["labelled_rows"])
        m.coverage.set(_or_nan(report["coverage"]["ratio"]))
        for route in ROUTES:
            values = report["by_route"].get(route, {})
            for name in METRICS[self.task.kind]:
                m.realized.labels(route, name).set(_or_nan(values.get(name)))
        delta = report["model_vs_rules"]
        for bound in ("estimate", "low", "high"):
            m.delta.labels(delta["metric"], bound).set(_or_nan(delta[bound]))
        if self.task.kind == "binary":
            estimated = (report["estimate_vs_realized"] or {}).get("estimated", {})
            for name in ("accuracy", "roc_auc"):
                m.estimated.labels(name).set(_or_nan(estimated.get(name)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()
