"""The drift process: a second BentoML service, composed into the API service with
`bentoml.depends`, so `bentoml serve` starts it as one separate process beside the API workers.

It holds the one window for all workers, runs the checks (evidently is imported here, never in a
worker), computes the shadow agreement, judges live performance on the labelled predictions in
the store (service/worker/performance_monitor.py), applies the store's retention, and answers
each worker's flush with both routing verdicts.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

import bentoml

from monitors.drift.window import WindowRow, features_frame
from monitors.periodic import PeriodicThread
from monitors.tasks import InvalidOutput, OutputPolicy
from service.scoring.model import LoadedModel, load_model, output_policy
from service.scoring.prediction import UNAVAILABLE
from service.spec import GuardedApp
from service.worker import config
from service.worker.admin_state import state_dir_path
from service.worker.config_store import ConfigStore
from service.worker.prediction_log import RecordWriter, Redactor, decode_rows, store_url
from service.worker.served_versions import ServedVersions

log = logging.getLogger("mlguard.drift")

# The drift process runs at a lower CPU priority than the API workers: monitoring takes what CPU
# serving leaves, so its start-up (importing Evidently: tens of CPU seconds) and its checks never
# slow an answer. A check that waits a little under load costs nothing (docs/DRIFT.md).
NICENESS = 10
RETRY_S = 10.0  # between load attempts of a version that failed to load
FOLLOW_S = 1.0  # how often the process checks which version the workers serve
RETENTION_S = 600.0  # how often predictions past store.retention_days are deleted


def build_drift_service(app: GuardedApp) -> Any:
    class DriftMonitorService:
        def __init__(self) -> None:
            os.nice(NICENESS)  # first, so that the imports below already run at the lower priority
            from monitors.metrics import DriftMetrics
            from service.worker.logs import configure_worker_logging
            from service.worker.runtime import model_tag

            configure_worker_logging()  # BentoML sets the root to WARNING: mlguard's INFO lines too

            self.config = ConfigStore(config.config_path(app.name), validate=app.check_settings)
            self.metrics = DriftMetrics()  # once: a new version's monitor publishes on them too
            self.monitor: Any = None
            self._monitor_version: str | None = None
            self.served: LoadedModel | None = None
            self._tag = model_tag(app, self.config.current)
            self._versions = ServedVersions()  # what the workers say they serve
            self._failed: tuple[str, float] | None = None  # the version that last failed, when
            self.config.start()
            # With a PostgreSQL store, one judge for every instance (fleet_drift.py); its
            # monitor, and Evidently with it, is built only when this instance has to judge.
            self.fleet = _fleet_drift(app, self.config, self._fleet_monitor, lambda: self.served,
                                      self.metrics.show_verdict)
            # The drift reference belongs to a version: load the one the workers serve (at first
            # the configured tag), follow their swaps and rollbacks (the window restarts), and
            # retry while none can be loaded.
            self._loader = PeriodicThread("mlguard-drift-model", self._follow, lambda: FOLLOW_S)
            self._follow()
            self._loader.start()
            self._judge = None
            if self.fleet is not None:
                self._judge = PeriodicThread("mlguard-fleet-drift", self.fleet.tick,
                                             lambda: min(1.0, self.config.current.drift.check_interval_s / 2))
                self._judge.start()
            self.live_performance, self._retention = _performance_monitor(
                app, self.config, lambda: self.served
            )
            self._log_writer = _log_writer(app, self.config, lambda: self.served)

        def _below_rules(self) -> bool:
            return self.live_performance is not None and self.live_performance.below_rules()

        def _follow(self) -> None:
            served = self.served
            reported = self._versions.follow(served.version if served is not None else None)
            if served is not None and (reported is None or served.version == reported):
                return
            wanted = reported or self._tag
            failed = self._failed
            if failed and failed[0] == wanted and time.monotonic() - failed[1] < RETRY_S:
                return
            try:
                # The workers decide what is served (gate, budget); this process only follows.
                loaded = load_model(app, wanted, warmup_budget_s=600.0, allow_worse_than_rules=True)
            except Exception:  # noqa: BLE001 -- refused or broken: never a crash loop of this process
                if not failed or failed[0] != wanted:  # once per version: the workers name the fix
                    log.warning("drift monitoring off until model %s loads", wanted)
                self._failed = (wanted, time.monotonic())
                return
            if self.fleet is not None:  # the monitor waits until this instance has to judge
                self.served = loaded
                log.info("drift for %s judged by the fleet's judge (pid %d)", loaded.version, os.getpid())
                return
            old, monitor = self.monitor, _monitor(app, loaded, lambda: self.config.current.drift,
                                                  self.metrics)
            self.served, self.monitor = loaded, monitor
            monitor.start()
            if old is not None:
                old.stop()
            log.info("drift monitor for %s up (pid %d)%s", loaded.version, os.getpid(),
                     "" if old is None else "; the window restarts")

        def _fleet_monitor(self) -> Any:
            """The monitor of the served version, built on first need (it imports Evidently);
            checked by the fleet's tick, never by a loop of its own."""
            served = self.served
            if served is None:
                return None
            if self.monitor is None or self._monitor_version != served.version:
                self.monitor = _monitor(app, served, lambda: self.config.current.drift, self.metrics)
                self._monitor_version = served.version
            return self.monitor

        def _policy(self) -> OutputPolicy:
            cfg = self.config.current
            return output_policy(
                self.served.card, cfg.decision.threshold, cfg.output_checks.range_tolerance,
                cfg.shadow.tolerance,
            )

        @bentoml.api
        def ingest(self, batch: bytes, version: str | None = None) -> dict[str, Any]:
            """Offer served rows to the window; answer the routing verdict.

            `batch`: a worker's pickled list of (row as the client sent it, the model's score or
            None, the client's hashed identity or None) (service/worker/drift_feed.py).
            `version`: the model version the sending worker serves; when it is not the one this
            window belongs to, the rows are dropped, and that version's reference is loaded once
            no worker serves the one followed (service/worker/served_versions.py)."""
            served_rows: list[tuple[dict[str, Any], float | str | None, str | None]] = pickle.loads(batch)
            if version and version != UNAVAILABLE:
                self._versions.report(version)
            if self.fleet is not None:
                return self._fleet_ingest(served_rows, version)
            if self.monitor is None or not self._serves(version):
                return {"routing_to_fallback": False, "policy_state": "off",
                        "performance_below_rules": self._below_rules()}
            policy = self._policy()
            self.monitor.ingest(
                WindowRow(app.features_of(row), p, _agreed(app, row, p, policy), client)
                for row, p, client in served_rows
            )
            # Only the verdict: it is all a worker needs, and it is cheap to answer per flush.
            return {
                "routing_to_fallback": self.monitor.routing_to_fallback(),
                "policy_state": self.monitor.policy.state.name,
                "performance_below_rules": self._below_rules(),
            }

        def _serves(self, version: str | None) -> bool:
            """Rows answered under `version` belong to the window of the version followed
            (rows of a worker without a model, answered by the rules, to any)."""
            return self.served is not None and (
                not version or version == UNAVAILABLE or version == self.served.version)

        def _fleet_ingest(self, served_rows: list[tuple[dict[str, Any], Any, str | None]],
                          version: str | None) -> dict[str, Any]:
            """This instance's rows are kept for judging alone while the store is down; the
            verdict is the fleet's."""
            if self._serves(version):
                policy = self._policy()
                self.fleet.ingest([
                    WindowRow(app.features_of(row), p, _agreed(app, row, p, policy), client)
                    for row, p, client in served_rows
                ])
            return {
                "routing_to_fallback": self.fleet.routing_to_fallback(),
                "policy_state": self.fleet.verdict.get("policy_state"),
                "performance_below_rules": self._below_rules(),
            }

        @bentoml.api
        def log_rows(self, batch: bytes) -> int:
            """Write a worker's batch of the prediction log (`encode_rows` in
            service/worker/prediction_log.py) and answer once it is committed; raises when the
            store does, and the worker keeps the rows. Run in BentoML's thread pool, beside
            `ingest`."""
            if self._log_writer is None:
                raise RuntimeError("the prediction log is off in this process (store.enabled: false)")
            rows = decode_rows(batch)
            self._log_writer.write(rows)
            return len(rows)

        @bentoml.api
        def performance(self) -> dict[str, Any]:
            """Live performance on labels: GET /monitoring/performance."""
            if self.live_performance is None:
                return {"enabled": False, "reason": "the prediction log is off (store.enabled: false)"}
            return self.live_performance.report()

        @bentoml.api
        def status(self) -> dict[str, Any]:
            if self.fleet is not None:
                return self.fleet.status()
            if self.monitor is None:
                return {"enabled": False, "reason": "no model version loaded: nothing to compare with"}
            return self.monitor.status()

        @bentoml.api
        def report(self) -> str:
            """The Evidently HTML report of the current window, rendered now."""
            from monitors.drift.report import render_report

            if self.fleet is not None and self.fleet.role == "follower":
                return ("<!doctype html><title>drift report</title><p>This instance follows the "
                        f"fleet's judge ({self.fleet.judge}): its /monitoring/drift/report renders "
                        "the fleet's window.</p>")
            rows = self.monitor.window.snapshot() if self.monitor is not None else []
            if not rows:
                return "<!doctype html><title>drift report</title><p>The drift window is empty.</p>"
            return render_report(self.monitor.checker(), features_frame(rows, app.features.names))

        @bentoml.on_shutdown
        def shutdown(self) -> None:
            self._loader.stop()
            if self._judge is not None:
                self._judge.stop()
                self.fleet.fleet.close()
            if self.live_performance is not None:
                self.live_performance.stop()
                self._retention.stop()
            if self.monitor is not None:
                self.monitor.stop()
            if self._log_writer is not None:
                self._log_writer.store.close()
            self.config.stop()

    DriftMonitorService.__name__ = DriftMonitorService.__qualname__ = "DriftMonitorService"
    # The report page can take tens of seconds to render on a busy machine; the workers' flushes
    # bound their own wait (service/worker/drift_feed.py), so this timeout only concerns the page.
    # Its traffic is internal: no access lines for it (issue: they drowned the service's own).
    return bentoml.service(
        DriftMonitorService, name=f"{app.name}_drift", workers=1, traffic={"timeout": 120},
        logging={"access": {"enabled": False}},
    )


def _monitor(
    app: GuardedApp, served: LoadedModel, settings: Callable[[], Any], metrics: Any
) -> Any:
    """The drift monitor of one version: its reference rows and its own predictions on them."""
    # Imported here, in the drift process only: the monitor pulls in evidently.
    import pandas as pd

    from monitors.drift.monitor import DriftMonitor

    card = served.card
    reference = pd.DataFrame(card.sample, columns=app.features.names)
    rows = card.sample_rows()
    policy = output_policy(card, 0.5, range_tolerance=1.0, agreement=0.0)
    scores = [o.score for o in app.task.from_model(served.model.predict_rows(rows), policy)
              if not isinstance(o, InvalidOutput)]
    reference_predictions = pd.Series(scores, dtype=object if app.task.kind == "multiclass" else float)
    return DriftMonitor(
        app.features, reference, settings, metrics, reference_predictions,
        card.yardstick.get("agreement"),
    )


def _fleet_drift(
    app: GuardedApp, config_store: ConfigStore, monitor: Callable[[], Any],
    served: Callable[[], LoadedModel | None],
    show: Callable[[dict[str, Any]], None],
) -> Any:
    """The fleet's drift coordination when the store is PostgreSQL and logs inputs (the fleet's
    window is the prediction log); None otherwise: this instance judges its own window."""
    from service.store import open_store
    from service.store.fleet import FleetRow, FleetStore
    from service.store.urls import POSTGRESQL, parse_store_url
    from service.worker.fleet_drift import FleetDrift
    from service.worker.performance_monitor import score_of

    store_cfg = config_store.current.store
    if not store_cfg.url or parse_store_url(store_cfg.url).dialect != POSTGRESQL:
        return None
    if not (store_cfg.enabled and store_cfg.log_inputs):
        log.warning("store.log_inputs is off: the fleet has no shared window, each instance "
                    "judges drift on its own")
        return None
    fleet = FleetStore(open_store(store_cfg.url, app.name, connect_now=False), store_cfg.url)

    def window_row(row: FleetRow) -> WindowRow | None:
        loaded = served()
        if row.inputs is None or loaded is None:
            return None
        cfg = config_store.current
        policy = output_policy(loaded.card, cfg.decision.threshold, cfg.output_checks.range_tolerance,
                               cfg.shadow.tolerance)
        model = score_of(app.task, row.model_output) if row.route == "model" else None
        rules = score_of(app.task, row.rules_output)
        agreed = None
        if model is not None and rules is not None:
            agreed = app.task.agree(app.task.from_score(model, policy),
                                    app.task.from_score(rules, policy), policy)
        return WindowRow(app.features_of(row.inputs), model, agreed, row.client)

    return FleetDrift(fleet, monitor, window_row,
                      lambda: served().version if served() is not None else None,
                      lambda: config_store.current.drift, show)


def _store_url(app: GuardedApp, cfg: config.Settings) -> str:
    """The plug-in's prediction store, as its workers find it (service/worker/runtime.py)."""
    return store_url(state_dir_path(cfg.admin.state_dir) / app.name, cfg.store)


def _log_writer(app: GuardedApp, config_store: ConfigStore,
                served: Callable[[], LoadedModel | None]) -> Any:
    """The instance's writer of the prediction log (None when the store is off): every worker
    sends its rows here, so the writing's CPU is spent outside the processes that serve."""
    from service.store import open_store

    cfg = config_store.current
    if not cfg.store.enabled:
        return None
    # Not fsynced per commit on SQLite: rows are at risk in a worker's buffer before this anyway.
    store = open_store(_store_url(app, cfg), app.name, connect_now=False, durable=False)
    return RecordWriter(app, store, served, lambda: config_store.current, Redactor())


def _performance_monitor(
    app: GuardedApp, config_store: ConfigStore, served: Callable[[], LoadedModel | None]
) -> tuple[Any, PeriodicThread | None]:
    """The live performance monitor and the store's retention, both reading the prediction log;
    (None, None) when the store is off."""
    from monitors.metrics import PerformanceMetrics
    from monitors.performance import Calibration
    from service.store import open_store
    from service.worker.performance_monitor import PerformanceMonitor

    cfg = config_store.current
    if not cfg.store.enabled:
        return None, None
    store = open_store(_store_url(app, cfg), app.name, connect_now=False)

    def calibration() -> Calibration | None:
        loaded = served()
        card = loaded.card.calibration if loaded is not None else None
        return Calibration.from_dict(card) if card else None

    def version() -> str | None:
        loaded = served()
        return loaded.version if loaded is not None else None

    monitor = PerformanceMonitor(app.task, lambda: config_store.current, store, PerformanceMetrics(),
                                 calibration, version)
    monitor.start()

    def purge() -> None:
        now, store_cfg = time.time(), config_store.current.store
        deleted, orphans = store.purge(now - store_cfg.retention_days * 86_400.0,
                                       now - store_cfg.pending_horizon_s)
        if deleted or orphans:
            log.info("retention: %d predictions past %s days and %d orphaned outcomes deleted",
                     deleted, store_cfg.retention_days, orphans)

    retention = PeriodicThread("mlguard-retention", purge, lambda: RETENTION_S)
    retention.start()
    return monitor, retention


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
