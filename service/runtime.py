"""Everything one worker process owns: the config store, the model, the pipeline, the metrics.

Built once per worker in the BentoML service's __init__, stopped in its shutdown hook.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitors.circuit import CircuitBreaker, CircuitMetrics
from monitors.metrics import Metrics
from monitors.reference import ReferenceStats
from service.admin_state import AdminStateStore, state_dir_path
from service.config import Settings
from service.config_store import ConfigStore
from service.drift_feed import DriftFeed
from service.faults import FaultyHeuristic, FaultyModel
from service.logs import configure_worker_logging
from service.model import Model
from service.model_call import DeadlineModelCall
from service.pipeline import GuardedPipeline
from service.recorder import MetricsRecorder
from service.router import RoutingState, mode_in_force
from service.spec import GuardedApp

log = logging.getLogger("mlguard.runtime")


class GuardedRuntime:
    def __init__(
        self,
        app: GuardedApp,
        config_path: Path,
        model: Model,
        reference: ReferenceStats,
        drift_client: Callable[[], Any] | None = None,  # () -> the drift process's proxy
    ) -> None:
        configure_worker_logging()
        self.app = app
        self.config = ConfigStore(config_path)
        self.model = model
        self.metrics = Metrics()
        for outcome in ("success", "failure"):  # at 0 from the start, so increase() sees the first
            self.metrics.config_reloads.labels(outcome)
        self.config.on_reload_outcome(lambda outcome: self.metrics.config_reloads.labels(outcome).inc())
        self.config.subscribe(lambda old, new: self._publish_state(new))
        # The operator's override lives in a file every worker polls with the config.
        self.admin = AdminStateStore(
            state_dir_path(self.config.current.admin.state_dir),
            on_change=lambda state: self._publish_state(self.settings()),
        )
        self.config.watch(self.admin.watched)
        self.circuit = CircuitBreaker(
            lambda: self.settings().circuit,
            listeners=[CircuitMetrics(self.metrics.circuit_state, self.metrics.circuit_transitions)],
        )
        self.model_call = DeadlineModelCall(
            FaultyModel(model.predict_proba, self.settings), lambda: self.settings().model
        )
        self.drift = (
            DriftFeed(drift_client, app.features.names, self.settings,
                      lambda: self.metrics.drift_checks.labels("error").inc())
            if drift_client is not None else None
        )
        self.pipeline = GuardedPipeline(
            heuristic=FaultyHeuristic(app.heuristic, self.settings),
            model_call=self.model_call,
            model_version=model.version,
            reference=reference,
            settings=self.settings,
            routing_state=self.routing_state,
            recorder=MetricsRecorder(self.metrics, self.settings, self.drift),
            circuit=self.circuit,
        )
        self.metrics.model_info.labels(model.version).set(1)
        self._publish_state(self.config.current)

    def settings(self) -> Settings:
        return self.config.current

    def routing_state(self, cfg: Settings) -> RoutingState:
        return RoutingState(
            config_mode=cfg.routing.mode,
            admin_mode=self.admin.current.mode,
            drift_active=self.drift is not None and self.drift.drift_active(cfg),
        )

    def admin_view(self) -> dict[str, object]:
        """What GET /admin/state shows of this worker."""
        cfg = self.settings()
        state = self.routing_state(cfg)
        return {
            "worker_pid": os.getpid(),
            "mode": {
                "effective": mode_in_force(state.config_mode, state.admin_mode),
                "config": state.config_mode,
                "admin": state.admin_mode,
                "admin_changed_by": self.admin.current.changed_by,
                "admin_changed_at": self.admin.current.changed_at,
            },
            "circuit": self.circuit.snapshot(),
            "drift": {"active": state.drift_active},
            "faults": {"active": cfg.faults.active, **cfg.faults.model_dump()},
            "config_version": self.config.version,
        }

    def _publish_state(self, cfg: Settings) -> None:
        in_force = mode_in_force(cfg.routing.mode, self.admin.current.mode)
        for mode in ("auto", "fallback"):
            self.metrics.routing_mode.labels(mode).set(1 if in_force == mode else 0)
        self.metrics.faults_active.set(1 if cfg.faults.active else 0)
        if cfg.faults.active:
            log.warning("FAULT DRILL ACTIVE: %s", cfg.faults.model_dump())

    def start(self) -> None:
        self.config.start()
        if self.drift is not None:
            self.drift.start()

    def stop(self) -> None:
        self.config.stop()
        if self.drift is not None:
            self.drift.stop()
        self.model_call.shutdown()
