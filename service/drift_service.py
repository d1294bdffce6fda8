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
from service import config
from service.config_store import ConfigStore
from service.spec import GuardedApp

log = logging.getLogger("mlguard.drift")

# The drift process runs at a lower CPU priority than the API workers: monitoring takes what CPU
# serving leaves, so its start-up (importing Evidently: tens of CPU seconds) and its checks never
# slow an answer. A check that waits a little under load costs nothing (docs/DRIFT.md).
NICENESS = 10


def build_drift_service(app: GuardedApp) -> Any:
    class DriftMonitorService:
        bento_model = bentoml.models.BentoModel(f"{app.model_name}:latest")

        def __init__(self) -> None:
            os.nice(NICENESS)  # first, so that the imports below already run at the lower priority
            # Imported here, in the drift process only: the monitor pulls in evidently.
            import pandas as pd

            from monitors.drift.monitor import DriftMonitor
            from monitors.metrics import DriftMetrics
            from service.model import StoreModel

            stored = self.bento_model
            self.config = ConfigStore(config.config_path())
            reference = stored.custom_objects["reference_sample"]
            model = StoreModel(stored, app.features)
            # The model's probabilities on the training split: the reference of prediction drift.
            rows = reference.astype(object).where(reference.notna(), None).to_dict("records")
            reference_probs = pd.Series(model.predict_proba(rows))
            baseline = stored.info.metadata.get("evaluation", {}).get("validation_agreement")
            self.monitor = DriftMonitor(
                app.features, reference, lambda: self.config.current.drift, DriftMetrics(),
                reference_probs, baseline,
            )
            self.config.start()
            self.monitor.start()
            log.info("drift monitor for %s up (pid %d)", stored.tag, os.getpid())

        @bentoml.api
        def ingest(
            self, rows: list[dict[str, Any]], probabilities: list[float | None]
        ) -> dict[str, Any]:
            """Append served rows to the window; answer the routing verdict."""
            threshold = self.config.current.decision.threshold
            self.monitor.ingest(
                WindowRow(row, p, _agreed(app, row, p, threshold)) for row, p in zip(rows, probabilities)
            )
            # Only the verdict: it is all a worker needs, and it is cheap to answer per flush.
            return {
                "routing_to_fallback": self.monitor.routing_to_fallback(),
                "policy_state": self.monitor.policy.state.name,
            }

        @bentoml.api
        def status(self) -> dict[str, Any]:
            return self.monitor.status()

        @bentoml.api
        def report(self) -> str:
            """The Evidently HTML report of the current window, rendered now."""
            from monitors.drift.report import render_report

            rows = self.monitor.window.snapshot()
            if not rows:
                return "<!doctype html><title>drift report</title><p>The drift window is empty.</p>"
            return render_report(self.monitor.checker(), features_frame(rows, app.features.names))

        @bentoml.on_shutdown
        def shutdown(self) -> None:
            self.monitor.stop()
            self.config.stop()

    DriftMonitorService.__name__ = DriftMonitorService.__qualname__ = "DriftMonitorService"
    # The report page can take tens of seconds to render on a busy machine; the workers' flushes
    # bound their own wait (service/drift_feed.py), so this timeout only concerns the page.
    return bentoml.service(
        DriftMonitorService, name=f"{app.name}_drift", workers=1, traffic={"timeout": 120}
    )


def _agreed(app: GuardedApp, row: dict[str, Any], probability: float | None, threshold: float) -> bool | None:
    """Shadow agreement: would the rules have taken the model's decision on this row?"""
    if probability is None:
        return None
    try:
        rules = app.heuristic.score(row).probability
    except Exception:  # noqa: BLE001 -- a failing rule is the heuristic's business, not a disagreement
        return None
    return (rules >= threshold) == (probability >= threshold)


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
