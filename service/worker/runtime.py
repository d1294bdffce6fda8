"""Everything one worker process owns: the config store, the model slot, the pipeline, the metrics.

Built once per worker in the BentoML service's __init__, stopped in its shutdown hook.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from monitors.circuit import OPEN, CircuitBreaker, CircuitListener, CircuitMetrics
from monitors.metrics import Metrics, StoreMetrics
from service.scoring.faults import FaultyHeuristic, FaultyModel
from service.scoring.model import LoadedModel
from service.scoring.model_call import DeadlineModelCall, InlinePolicy, Scored
from service.scoring.pipeline import GuardedPipeline, Recorder, Recorders
from service.scoring.prediction import UNAVAILABLE
from service.scoring.recorder import MetricsRecorder
from service.scoring.router import RoutingState, mode_in_force
from service.spec import GuardedApp
from service.store import WriteBehindLog, open_store
from service.worker.admin_state import open_admin_state, state_dir_path
from service.worker.config import Settings, config_path
from service.worker.config_store import ConfigStore
from service.worker.drift_feed import DriftFeed
from service.worker.logs import configure_worker_logging
from service.worker.model_memory import ModelMemory
from service.worker.model_slot import ModelSlot
from service.worker.prediction_log import (
    MonitoringProcessSink,
    PredictionLogRecorder,
    RecordWriter,
    Redactor,
    store_url,
    to_wire,
)

log = logging.getLogger("mlguard.runtime")


def model_tag(app: GuardedApp, settings: Settings) -> str:
    return settings.model.tag or f"{app.model_name}:latest"


class GuardedRuntime:
    def __init__(
        self,
        app: GuardedApp,
        drift_client: Callable[[], Any] | None = None,  # () -> the drift process's proxy
        registry: CollectorRegistry = REGISTRY,
        config_file: Any = None,  # default: config_path(app.name)
    ) -> None:
        configure_worker_logging()
        self.app = app
        self._drift_client = drift_client
        self.config = ConfigStore(config_file or config_path(app.name), validate=app.check_settings)
        # One folder of state per plug-in, so two plug-ins served from one checkout never share it.
        state_dir = state_dir_path(self.config.current.admin.state_dir) / app.name
        self._published_version: str | None = None
        self.memory = ModelMemory(state_dir)
        self.slot = ModelSlot(
            app, model_tag(app, self.config.current), lambda: self.settings().model, self.memory
        )
        self.slot.load()  # before the metrics: a regression plug-in's buckets come from the card
        self.metrics = Metrics(registry, value_buckets(self.slot.current))
        for outcome in ("success", "failure"):  # at 0 from the start, so increase() sees the first
            self.metrics.config_reloads.labels(outcome)
        self.config.on_reload_outcome(lambda outcome: self.metrics.config_reloads.labels(outcome).inc())
        self.config.subscribe(lambda old, new: self._publish_state(new))
        self.config.subscribe(
            lambda old, new: self.slot.request(model_tag(app, new), old.model != new.model)
        )
        # The operator's override: shared by every instance through a PostgreSQL store, else a
        # file every worker polls with the config (admin_state.py); read before the worker serves.
        self.admin = open_admin_state(
            self.config.current.store.url, state_dir, app.name,
            on_change=lambda state: self._publish_state(self.settings()),
        )
        self.admin.follow(self.config.watch)
        # The model memory lives in a file every worker polls with the config.
        self.config.watch(self.memory.watched)
        self.circuit = CircuitBreaker(
            lambda: self.settings().circuit,
            listeners=[
                CircuitMetrics(self.metrics.circuit_state, self.metrics.circuit_transitions),
                _OnOpen(self.slot.circuit_opened),
            ],
        )
        self._drill = FaultyModel(self.settings)
        self.inline = InlinePolicy(
            self._inline_limit_ms, lambda: self.slot.current.version if self.slot.current else None
        )
        self.model_call = DeadlineModelCall(self._predict, lambda: self.settings().model, self.inline)
        self.drift = (
            DriftFeed(drift_client,
                      lambda: self.slot.current.version if self.slot.current else None,
                      self.settings,
                      lambda: self.metrics.drift_checks.labels("error").inc())
            if drift_client is not None else None
        )
        self.store_metrics = StoreMetrics(registry)
        self._log_sink: RecordWriter | MonitoringProcessSink | None = None
        self.records, self.prediction_log, log_recorder = self._open_store(state_dir)
        self.pipeline = GuardedPipeline(
            app,
            model_call=self.model_call,
            served=lambda: self.slot.current,
            settings=self.settings,
            routing_state=self.routing_state,
            recorder=Recorders(MetricsRecorder(self.metrics, app.task, self.drift), log_recorder),
            circuit=self.circuit,
            heuristic=FaultyHeuristic(app.heuristic, self.settings),
            observe=self.slot.observe,
        )
        self._publish_model(self.slot.current)
        if self.slot.current is not None:
            self.metrics.model_load_seconds.observe(self.slot.current.seconds)
        for outcome in SWAP_OUTCOMES:  # at 0 from the start, so increase() sees the first
            self.metrics.model_swaps.labels(outcome)
        self.slot.on_loaded = self._on_version  # a version loaded later: retry, swap, rollback
        self.slot.on_swap = lambda outcome: self.metrics.model_swaps.labels(outcome).inc()
        self.slot.on_load_seconds = self.metrics.model_load_seconds.observe
        self._publish_state(self.config.current)

    def _open_store(self, state_dir: Path) -> tuple[Any, WriteBehindLog | None, Recorder]:
        """The store for /feedback and /predictions, and the write-behind log the pipeline
        records into; (None, None, a recorder that drops) with `store.enabled: false`."""
        cfg = self.config.current.store
        if not cfg.enabled:
            return None, None, Recorder()
        redactor = Redactor()
        redactor.check(cfg)  # a hash without a salt stops the worker here, naming the variable
        url = store_url(state_dir, cfg)
        m = self.store_metrics
        written, dropped = m.log_rows.labels("written"), m.log_rows.labels("dropped")
        m.store_up.set(1)
        # This worker's own writer: used only while the monitoring process cannot write (or
        # when none was started). Not connected yet: a store that is down must not keep the
        # worker from serving; not fsynced per commit on SQLite: a killed worker loses its
        # buffer anyway, a power cut a bit more.
        local = RecordWriter(self.app, open_store(url, self.app.name, connect_now=False, durable=False),
                             lambda: self.slot.current, self.settings, redactor, beside_serving=True)
        sink = (MonitoringProcessSink(self._drift_client, local, asyncio.get_running_loop())
                if self._drift_client else local)  # built on the worker's loop, as BentoML does
        self._log_sink = sink
        writer = WriteBehindLog(
            sink, to_wire,
            capacity=cfg.buffer_rows, batch_rows=cfg.batch_rows, interval_s=cfg.flush_interval_s,
            on_written=written.inc, on_dropped=dropped.inc,
            store_up=lambda up: m.store_up.set(1 if up else 0),
            on_depth=m.buffer_rows.set,
        )
        # A connection of its own for /feedback and /predictions: they never wait on a flush.
        return open_store(url, self.app.name, connect_now=False), writer, PredictionLogRecorder(writer.append)

    def _predict(self, rows: list[dict[str, Any]]) -> Scored:
        """Runs in a model thread: the version in the slot now computes, and says so."""
        served = self.slot.current
        if served is None:  # the router sends no row without a model
            raise RuntimeError("no model version loaded")
        return Scored(served.version, self._drill(served.model.predict_rows, rows))

    def _inline_limit_ms(self) -> float:
        cfg = self.settings()
        return 0.0 if cfg.faults.active else cfg.model.inline_max_ms  # a drill's delays stay in threads

    def _on_version(self, loaded: LoadedModel) -> None:
        self.circuit.reset()  # a new version is judged on its own calls
        self._publish_model(loaded)

    def _publish_model(self, loaded: LoadedModel | None) -> None:
        version = loaded.version if loaded else UNAVAILABLE
        self.metrics.model_loaded.set(1 if loaded else 0)
        # Multiprocess gauges cannot drop a label: the version no longer served goes to 0.
        if self._published_version not in (None, version):
            self.metrics.model_info.labels(self._published_version).set(0)
        self.metrics.model_info.labels(version).set(1)
        self._published_version = version

    def settings(self) -> Settings:
        return self.config.current

    def ready(self) -> bool:
        """What /readyz answers: not ready only while a required model is missing."""
        return self.slot.current is not None or not self.settings().model.required

    def routing_state(self, cfg: Settings) -> RoutingState:
        return RoutingState(
            config_mode=cfg.routing.mode,
            admin_mode=self.admin.current.mode,
            drift_active=self.drift is not None and self.drift.drift_active(cfg),
            below_rules=self.drift is not None and self.drift.below_rules(cfg),
            model_available=self.slot.current is not None,
        )

    def admin_view(self) -> dict[str, object]:
        """What GET /admin/state shows of this worker."""
        cfg = self.settings()
        state = self.routing_state(cfg)
        served = self.slot.current
        return {
            "worker_pid": os.getpid(),
            "app": self.app.name,
            "task": self.app.task.kind,
            "mode": {
                "effective": mode_in_force(state.config_mode, state.admin_mode),
                "config": state.config_mode,
                "admin": state.admin_mode,
                "admin_changed_by": self.admin.current.changed_by,
                "admin_changed_at": self.admin.current.changed_at,
                "admin_actor": self.admin.current.actor,
                "admin_reason": self.admin.current.reason,
            },
            "model": {
                "tag": self.slot.tag,
                "version": served.version if served else UNAVAILABLE,
                "loaded": served is not None,
                "inline": self.inline.inline,  # called on the event loop (model.inline_max_ms)
                "previous": self.slot.previous.version if self.slot.previous else None,
                "problem": self.slot.problem,
                "rolled_back": self.slot.rolled_back,
                "not_loaded_again": self.memory.current.bad,  # until model.tag changes
                "yardstick": served.card.yardstick if served else None,
                # Without a model there are no reference statistics to check inputs against.
                "input_checks": "on" if served else "off: no model version loaded",
            },
            "circuit": self.circuit.snapshot(),
            "drift": {"active": state.drift_active},
            "prediction_log": self._log_view(),
            "faults": {"active": cfg.faults.active, **cfg.faults.model_dump()},
            "config_version": self.config.version,
        }

    def _log_view(self) -> dict[str, object]:
        """This worker's prediction log: its rows so far, and who writes them."""
        if self.prediction_log is None or self._log_sink is None:
            return {"enabled": False}
        return {"enabled": True, "written_by": self._log_sink.written_by,
                **dataclasses.asdict(self.prediction_log.counts())}

    def _publish_state(self, cfg: Settings) -> None:
        in_force = mode_in_force(cfg.routing.mode, self.admin.current.mode)
        for mode in ("auto", "fallback"):
            self.metrics.routing_mode.labels(mode).set(1 if in_force == mode else 0)
        self.metrics.faults_active.set(1 if cfg.faults.active else 0)
        if cfg.faults.active:
            log.warning("FAULT DRILL ACTIVE: %s", cfg.faults.model_dump())

    def start(self) -> None:
        self.config.start()
        if self.prediction_log is not None:
            self.prediction_log.start()
        self.slot.start_retrying()
        if self.drift is not None:
            self.drift.start()

    async def stop(self) -> None:
        """Called on the worker's event loop (BentoML's shutdown hook)."""
        self.config.stop()
        self.admin.stop()
        self.slot.stop()
        if self.drift is not None:
            self.drift.stop()
        self.model_call.shutdown()
        if self.prediction_log is not None:
            if isinstance(self._log_sink, MonitoringProcessSink):
                self._log_sink.hand_back()  # the monitoring process may be stopping too
            # In a thread: a write may still be finishing. What cannot be written within 5 s is
            # counted dropped.
            await asyncio.to_thread(self.prediction_log.stop, 5.0)
        if self.records is not None:
            self.records.close()


SWAP_OUTCOMES = ("swapped", "failed", "rolled_back")


class _OnOpen(CircuitListener):
    """Tells the model slot when the circuit opens (a rollback signal after a swap)."""

    def __init__(self, opened: Callable[[], None]) -> None:
        self._opened = opened

    def state_change(self, old: str, new: str) -> None:
        if new == OPEN:
            self._opened()


def value_buckets(loaded: LoadedModel | None) -> tuple[float, ...]:
    """A regression plug-in's value histogram: 10 equal steps over the training target's range."""
    if loaded is None or not loaded.card.target:
        return Histogram.DEFAULT_BUCKETS
    low, high = loaded.card.target["min"], loaded.card.target["max"]
    step = (high - low) / 10 or 1.0
    return tuple(round(low + step * i, 6) for i in range(11)) + (float("inf"),)
