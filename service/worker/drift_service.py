"""The drift process: a second BentoML service, composed into the API service with
`bentoml.depends`, so `bentoml serve` starts it as one separate process beside the API workers.

It holds the one window for all workers, runs the checks (evidently is imported here, never in a
worker), computes the shadow agreement, and answers each worker's flush with the routing verdict.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import bentoml

from monitors.drift.window import WindowRow, features_frame
from monitors.periodic import PeriodicThread
from monitors.tasks import InvalidOutput, OutputPolicy
from service.scoring.model import LoadedModel, load_model, output_policy
from service.spec import GuardedApp
from service.worker import config
from service.worker.config_store import ConfigStore

log = logging.getLogger("mlguard.drift")

# The drift process runs at a lower CPU priority than the API workers: monitoring takes what CPU
# serving leaves, so its start-up (importing Evidently: tens of CPU seconds) and its checks never
# slow an answer. A check that waits a little under load costs nothing (docs/DRIFT.md).
NICENESS = 10
RETRY_S = 30.0  # between load attempts while no model version can be loaded


def build_drift_service(app: GuardedApp) -> Any:
    class DriftMonitorService:
        def __init__(self) -> None:
            os.nice(NICENESS)  # first, so that the imports below already run at the lower priority
            from service.worker.runtime import model_tag

            self.config = ConfigStore(config.config_path(app.name), validate=app.check_settings)
            self.monitor: Any = None
            self.served: LoadedModel | None = None
            self._tag = model_tag(app, self.config.current)
            self._said_off = False
            self.config.start()
            # Without a model there is nothing to compare with: retry until one can be loaded,
            # as the workers do (the workers log the fix).
            self._loader = PeriodicThread("mlguard-drift-model-load", self._try_load, lambda: RETRY_S)
            if not self._try_load():
                self._loader.start()

        def _try_load(self) -> bool:
            if self.monitor is not None:
                return True
            try:
                served = load_model(app, self._tag)
            except Exception:  # noqa: BLE001 -- refused or broken: never a crash loop of this process
                # Once, without the reason: the workers log the one line naming the fix.
                if not self._said_off:
                    log.warning("drift monitoring off until model %s loads", self._tag)
                    self._said_off = True
                return False
            monitor = _monitor(app, served, lambda: self.config.current.drift)
            self.served, self.monitor = served, monitor
            monitor.start()
            self._loader.stop(timeout_s=0)
            log.info("drift monitor for %s up (pid %d)", served.version, os.getpid())
            return True

        def _policy(self) -> OutputPolicy:
            cfg = self.config.current
            return output_policy(
                self.served.card, cfg.decision.threshold, cfg.output_checks.range_tolerance,
                cfg.shadow.tolerance,
            )

        @bentoml.api
        def ingest(
            self, rows: list[dict[str, Any]], predictions: list[float | str | None]
        ) -> dict[str, Any]:
            """Append served rows (as clients sent them) to the window; answer the routing verdict."""
            if self.monitor is None:
                return {"routing_to_fallback": False, "policy_state": "off"}
            policy = self._policy()
            self.monitor.ingest(
                WindowRow(app.features_of(row), p, _agreed(app, row, p, policy))
                for row, p in zip(rows, predictions)
            )
            # Only the verdict: it is all a worker needs, and it is cheap to answer per flush.
            return {
                "routing_to_fallback": self.monitor.routing_to_fallback(),
                "policy_state": self.monitor.policy.state.name,
            }

        @bentoml.api
        def status(self) -> dict[str, Any]:
            if self.monitor is None:
                return {"enabled": False, "reason": "no model version loaded: nothing to compare with"}
            return self.monitor.status()

        @bentoml.api
        def report(self) -> str:
            """The Evidently HTML report of the current window, rendered now."""
            from monitors.drift.report import render_report

            rows = self.monitor.window.snapshot() if self.monitor is not None else []
            if not rows:
                return "<!doctype html><title>drift report</title><p>The drift window is empty.</p>"
            return render_report(self.monitor.checker(), features_frame(rows, app.features.names))

        @bentoml.on_shutdown
        def shutdown(self) -> None:
            self._loader.stop()
            if self.monitor is not None:
                self.monitor.stop()
            self.config.stop()

    DriftMonitorService.__name__ = DriftMonitorService.__qualname__ = "DriftMonitorService"
    # The report page can take tens of seconds to render on a busy machine; the workers' flushes
    # bound their own wait (service/worker/drift_feed.py), so this timeout only concerns the page.
    # Its traffic is internal: no access lines for it (issue: they drowned the service's own).
    return bentoml.service(
        DriftMonitorService, name=f"{app.name}_drift", workers=1, traffic={"timeout": 120},
        logging={"access": {"enabled": False}},
    )


def _monitor(app: GuardedApp, served: LoadedModel, settings: Callable[[], Any]) -> Any:
    """The drift monitor of one version: its reference rows and its own predictions on them."""
    # Imported here, in the drift process only: the monitor pulls in evidently.
    import pandas as pd

    from monitors.drift.monitor import DriftMonitor
    from monitors.metrics import DriftMetrics

    card = served.card
    reference = pd.DataFrame(card.sample, columns=app.features.names)
    rows = card.sample_rows()
    policy = output_policy(card, 0.5, range_tolerance=1.0, agreement=0.0)
    scores = [o.score for o in app.task.from_model(served.model.predict_rows(rows), policy)
              if not isinstance(o, InvalidOutput)]
    reference_predictions = pd.Series(scores, dtype=object if app.task.kind == "multiclass" else float)
    return DriftMonitor(
        app.features, reference, settings, DriftMetrics(), reference_predictions,
        card.yardstick.get("agreement"),
    )


def _agreed(app: GuardedApp, row: dict[str, Any], prediction: Any, policy: OutputPolicy) -> bool | None:
    """Shadow agreement: would the rules have answered as the model did on this row?"""
    if prediction is None:
        return None
    try:
        rules = app.task.from_rules(app.heuristic.score(row), policy)
    except Exception:  # noqa: BLE001 -- a failing rule is the heuristic's business, not a disagreement
        return None
    return app.task.agree(app.task.from_score(prediction, policy), rules, policy)


def drift_client_of(worker: Any, drift_service_name: str) -> Callable[[], Any] | None:
    """() -> the drift process's proxy, or None when no drift process was started.

    Only `bentoml serve` starts the drift process and tells the workers where it listens
    (BENTOML_RUNNER_MAP). Elsewhere (development mode, a service built in a test) BentoML would
    build the drift service inside this worker, evidently included: drift monitoring stays off.
    """
    if drift_service_name not in json.loads(os.environ.get("BENTOML_RUNNER_MAP") or "{}"):
        log.warning("no drift process (not started by `bentoml serve`): drift monitoring is off")
        return None
    return lambda: worker.drift
