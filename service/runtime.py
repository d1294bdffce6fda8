"""Everything one worker process owns: the config store, the model, the pipeline, the metrics.

Built once per worker in the BentoML service's __init__, stopped in its shutdown hook.
"""
from __future__ import annotations

import logging
from pathlib import Path

from monitors.metrics import Metrics
from monitors.reference import ReferenceStats
from service.config import Settings
from service.config_store import ConfigStore
from service.faults import FaultyHeuristic, FaultyModel
from service.model import Model
from service.model_call import DeadlineModelCall
from service.pipeline import GuardedPipeline
from service.recorder import MetricsRecorder
from service.router import RoutingState
from service.spec import GuardedApp

log = logging.getLogger("mlguard.runtime")


class GuardedRuntime:
    def __init__(
        self, app: GuardedApp, config_path: Path, model: Model, reference: ReferenceStats
    ) -> None:
        self.app = app
        self.config = ConfigStore(config_path)
        self.model = model
        self.metrics = Metrics()
        self.config.on_reload_outcome(lambda outcome: self.metrics.config_reloads.labels(outcome).inc())
        self.config.subscribe(lambda old, new: self._publish_state(new))
        self.model_call = DeadlineModelCall(FaultyModel(model.predict_proba, self.settings))
        self.pipeline = GuardedPipeline(
            heuristic=FaultyHeuristic(app.heuristic, self.settings),
            model_call=self.model_call,
            model_version=model.version,
            reference=reference,
            settings=self.settings,
            routing_state=self.routing_state,
            recorder=MetricsRecorder(self.metrics, self.settings),
        )
        self.metrics.model_info.labels(model.version).set(1)
        self._publish_state(self.config.current)

    def settings(self) -> Settings:
        return self.config.current

    def routing_state(self, cfg: Settings) -> RoutingState:
        return RoutingState(config_mode=cfg.routing.mode)

    def _publish_state(self, cfg: Settings) -> None:
        for mode in ("auto", "fallback"):
            self.metrics.routing_mode.labels(mode).set(1 if cfg.routing.mode == mode else 0)
        self.metrics.faults_active.set(1 if cfg.faults.active else 0)
        if cfg.faults.active:
            log.warning("FAULT DRILL ACTIVE: %s", cfg.faults.model_dump())

    def start(self) -> None:
        self.config.start()

    def stop(self) -> None:
        self.config.stop()
        self.model_call.shutdown()
