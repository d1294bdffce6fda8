"""The drift monitor: the one window, a checker thread, the policy and the drift metrics.

It lives in the drift process only. Ingest admits rows to the window (cheap, called per flush from
every worker); the checker thread runs a check every `check_interval_s`; `status()` is what the
workers route on and what GET /monitoring/drift shows.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import pandas as pd

from monitors.drift.check import DriftCheck
from monitors.drift.policy import ClearState, DriftedState, DriftPolicy, Hysteresis
from monitors.drift.result import DriftResult
from monitors.drift.window import (
    DriftWindow,
    WindowRow,
    agreement_ratio,
    features_frame,
    predictions,
    row_key,
)
from monitors.features import FeatureSchema
from monitors.metrics import DriftMetrics
from monitors.periodic import PeriodicThread

log = logging.getLogger("mlguard.drift")


class DriftMonitor:
    def __init__(
        self,
        schema: FeatureSchema,
        reference: pd.DataFrame,
        settings: Callable[[], object],  # () -> DriftConfig; kept untyped so monitors/ needs no service/
        metrics: DriftMetrics,
        reference_predictions: pd.Series | None = None,
        agreement_baseline: float | None = None,
    ) -> None:
        self.schema = schema
        self.reference = reference
        self.settings = settings
        self.metrics = metrics
        self.reference_predictions = reference_predictions
        self.agreement_baseline = agreement_baseline
        cfg = settings()
        # A row is "the same" when the features the check compares are (extra fields do not count).
        self.window = DriftWindow(cfg.window_size, cfg.max_client_share, row_key(schema.names))
        self.policy = DriftPolicy(self._hysteresis)
        self.policy.on_transition(lambda old, new: log.warning("drift policy: %s -> %s", old, new))
        self.last: DriftResult | None = None
        self.last_outcome: str | None = None
        self._check: tuple[tuple, DriftCheck] | None = None
        self._loop = PeriodicThread("mlguard-drift-check", self._tick, lambda: settings().check_interval_s)
        if agreement_baseline is not None:
            metrics.shadow_baseline.set(agreement_baseline)
        metrics.detected.set(0)

    def _hysteresis(self) -> Hysteresis:
        cfg = self.settings()
        return Hysteresis(cfg.enter_after, cfg.exit_after, cfg.on_error)

    def checker(self) -> DriftCheck:
        """Built once per set of statistical settings (the buckets depend on the window size)."""
        cfg = self.settings()
        key = (cfg.window_size, cfg.numeric_p_value, cfg.categorical_p_value, cfg.share_threshold)
        if self._check is None or self._check[0] != key:
            check = DriftCheck(
                self.schema, self.reference, cfg.window_size, cfg.numeric_p_value,
                cfg.categorical_p_value, cfg.share_threshold, self.reference_predictions,
            )
            self._check = (key, check)
        return self._check[1]

    def ingest(self, rows: Iterable[WindowRow]) -> None:
        """Admit served rows: each distinct feature row once, no client beyond its share."""
        cfg = self.settings()
        self.window.resize(cfg.window_size, cfg.max_client_share)
        self.window.extend(rows)

    def restart(self, drifted: bool) -> None:
        """Start over from a verdict this monitor did not reach itself (a fleet's, when this
        instance judges again): the window empty, no last check of its own to report, the policy
        drifted or clear as told."""
        self.window.clear()
        self.last = None
        if self.policy.drifted != drifted:
            self.policy.move_to(DriftedState if drifted else ClearState)

    def check_once(self) -> str:
        """Run one check now; returns its outcome (the metric label)."""
        cfg = self.settings()
        self.window.resize(cfg.window_size, cfg.max_client_share)
        rows = self.window.snapshot()
        self.metrics.window_rows.set(len(rows))
        agreement = agreement_ratio(rows)
        if agreement is not None:
            self.metrics.shadow_agreement.set(agreement)
        if len(rows) < cfg.min_samples:
            return self._count("insufficient_data")
        try:
            served = predictions(rows)
            result = self.checker().run(
                features_frame(rows, self.schema.names),
                served if len(served) >= cfg.min_samples else None,
            )
        except Exception:  # a broken check must never reach serving: count, log, apply on_error
            log.exception("drift check failed; on_error=%s", cfg.on_error)
            self.policy.record_error()
            self.metrics.detected.set(1 if self.policy.drifted else 0)
            return self._count("error")
        self.last = result
        self.policy.record_check(result.dataset_drift)
        self._publish(result)
        return self._count("drift" if result.dataset_drift else "no_drift")

    def _count(self, outcome: str) -> str:
        self.last_outcome = outcome
        self.metrics.checks.labels(outcome).inc()
        return outcome

    def _publish(self, result: DriftResult) -> None:
        self.metrics.check_duration.observe(result.seconds)
        self.metrics.show_check(self.policy.drifted, result.to_dict())

    def routing_to_fallback(self) -> bool:
        cfg = self.settings()
        return cfg.enabled and cfg.action == "route" and self.policy.drifted

    def status(self) -> dict:
        cfg = self.settings()
        last = self.last
        rows = self.window.snapshot()
        return {
            "enabled": cfg.enabled,
            "action": cfg.action,
            "dataset_drift": bool(last and last.dataset_drift),
            "drift_share": last.drift_share if last else None,
            "features": {n: vars(c) for n, c in last.features.items()} if last else {},
            "prediction": vars(last.prediction) if last and last.prediction else None,
            "checked_at": _iso(last.checked_at) if last else None,
            "check_seconds": last.seconds if last else None,
            "last_outcome": self.last_outcome,
            "window_rows": len(rows),
            "window_size": cfg.window_size,
            **self._window_guard(len(rows)),
            "min_samples": cfg.min_samples,
            "policy_state": self.policy.state.name,
            "routing_to_fallback": self.routing_to_fallback(),
            "shadow_agreement": agreement_ratio(rows),
            "shadow_agreement_baseline": self.agreement_baseline,
        }

    def _window_guard(self, rows: int) -> dict:
        """How the window resisted repeated rows and dominant clients (GET /monitoring/drift)."""
        window = self.window
        held = window.clients()
        return {
            "duplicates_dropped": window.duplicates,
            "client_rows_evicted": window.capped,
            "window_clients": len(held),
            "largest_client_share": max(held.values()) / rows if held and rows else 0.0,
        }

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def _tick(self) -> None:
        if self.settings().enabled:
            self.check_once()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")
