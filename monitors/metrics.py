"""Every mlguard metric, defined once, with bounded labels.

Names are a public contract (the dashboard and the alert rules query them). Metrics are created
when `Metrics()` is instantiated in a worker, after BentoML has set PROMETHEUS_MULTIPROC_DIR, so
prometheus_client picks its multiprocess value class and counts from all workers add up.

Buckets: the model path costs ~2-5 ms per row here and the rules ~20 us; the deadline defaults
to 250 ms. Buckets run from 0.25 ms to 2.5 s so both paths and a deadline breach are resolved.
"""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
PROBABILITY_BUCKETS = tuple(round(i * 0.05, 2) for i in range(1, 21))


class Metrics:
    """The API workers' metrics. `registry` is the global one by default (what /metrics serves);
    tests pass a fresh `CollectorRegistry()` so several runtimes can live in one process.
    `value_buckets` are a regression plug-in's answered-value buckets."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        value_buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS,
    ) -> None:
        r = registry
        self.requests = Counter(
            "mlguard_requests",
            "Predictions answered, by route and by the reason code that decided the route",
            ["route", "reason"], registry=r,
        )
        self.request_duration = Histogram(
            "mlguard_request_duration_seconds",
            "Pipeline time per prediction (a batch's time is shared out over its rows)",
            ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.model_duration = Histogram(
            "mlguard_model_duration_seconds",
            "Time inside one model call (a batch is one call)",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.input_violations = Counter(
            "mlguard_input_violations",
            "Input check violations, by check and schema field",
            ["check", "field"], registry=r,
        )
        self.probability = Histogram(
            "mlguard_prediction_probability",
            "Answered probabilities of the positive class (binary plug-ins), by route",
            ["route"],
            buckets=PROBABILITY_BUCKETS, registry=r,
        )
        self.value = Histogram(
            "mlguard_prediction_value",
            "Answered values (regression plug-ins), by route",
            ["route"],
            buckets=value_buckets, registry=r,
        )
        self.decisions = Counter(
            "mlguard_decisions", "Decisions answered (classification plug-ins), by route and class",
            ["route", "decision"], registry=r,
        )
        self.model_info = Gauge(
            "mlguard_model_info", "The model version served", ["model_version"],
            multiprocess_mode="livemax", registry=r,
        )
        self.routing_mode = Gauge(
            "mlguard_routing_mode", "1 for the routing mode in force", ["mode"],
            multiprocess_mode="livemax", registry=r,
        )
        self.faults_active = Gauge(
            "mlguard_faults_active", "1 while any fault drill is configured", multiprocess_mode="livemax",
            registry=r,
        )
        self.config_reloads = Counter(
            "mlguard_config_reloads", "Config reload attempts, by outcome", ["outcome"], registry=r
        )
        # Each worker has its own breaker: "liveall" keeps one series per live worker (pid label).
        self.circuit_state = Gauge(
            "mlguard_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            multiprocess_mode="liveall", registry=r,
        )
        self.circuit_transitions = Counter(
            "mlguard_circuit_transitions", "Circuit breaker state changes, by new state", ["to"], registry=r
        )
        self.model_swaps = Counter(
            "mlguard_model_swaps",
            "Model version changes, by outcome: swapped, failed (refused, the old one stays), "
            "rolled_back", ["outcome"], registry=r,
        )
        self.model_load_seconds = Histogram(
            "mlguard_model_load_seconds", "Time to load, check and warm up one model version",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0), registry=r,
        )
        self.model_loaded = Gauge(
            "mlguard_model_loaded", "1 while a model version is loaded, 0 while the rules answer all",
            multiprocess_mode="livemin", registry=r,
        )
        self.drift_checks = drift_checks_counter(r)  # a worker counts an unreachable drift process


DRIFT_CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def drift_checks_counter(registry: CollectorRegistry = REGISTRY) -> Counter:
    """Set by the drift process per check, and by a worker that cannot reach it (outcome=error)."""
    return Counter(
        "mlguard_drift_checks",
        "Drift checks, by outcome: drift, no_drift, insufficient_data, error",
        ["outcome"],
        registry=registry,
    )


class DriftMetrics:
    """Metrics of the one drift process. Its gauges have a single writer, so "mostrecent" is the
    truth, and a respawned drift process overwrites what the dead one left."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:  # tests pass their own
        r = registry
        self.checks = drift_checks_counter(r)
        self.detected = Gauge(
            "mlguard_drift_detected", "1 while the drift policy says drifted (after enter_after checks)",
            multiprocess_mode="mostrecent", registry=r,
        )
        self.share = Gauge(
            "mlguard_drift_share", "Share of drifted features at the last check",
            multiprocess_mode="mostrecent", registry=r,
        )
        self.feature_score = Gauge(
            "mlguard_feature_drift_score", "Drift test p-value per feature at the last check",
            ["feature"], multiprocess_mode="mostrecent", registry=r,
        )
        self.feature_drifted = Gauge(
            "mlguard_feature_drifted", "1 when the feature's test said drifted at the last check",
            ["feature"], multiprocess_mode="mostrecent", registry=r,
        )
        self.prediction_score = Gauge(
            "mlguard_prediction_drift_score",
            "p-value of the model's predictions at the last check (KS on the probability or value, "
            "chi-square on the predicted class)",
            multiprocess_mode="mostrecent", registry=r,
        )
        self.check_duration = Histogram(
            "mlguard_drift_check_duration_seconds", "Time of one drift check",
            buckets=DRIFT_CHECK_BUCKETS, registry=r,
        )
        self.window_rows = Gauge(
            "mlguard_drift_window_rows", "Rows in the drift window", multiprocess_mode="mostrecent", registry=r
        )
        self.shadow_agreement = Gauge(
            "mlguard_shadow_agreement_ratio",
            "Share of model-routed rows in the window where the rules took the model's decision",
            multiprocess_mode="mostrecent", registry=r,
        )
        self.shadow_baseline = Gauge(
            "mlguard_shadow_agreement_baseline",
            "The same agreement measured on the validation split at training time",
            multiprocess_mode="mostrecent", registry=r,
        )

    def show_check(self, drifted: bool, check: dict) -> None:
        """A check's findings on the gauges: `check` is `DriftResult.to_dict()` (this process
        checked) or the `status` a fleet judge published (show_verdict); `drifted` is the policy's
        state after it."""
        self.detected.set(1 if drifted else 0)
        if check.get("drift_share") is not None:
            self.share.set(check["drift_share"])
        for name, column in (check.get("features") or {}).items():
            self.feature_score.labels(name).set(column["score"])
            self.feature_drifted.labels(name).set(1 if column["drifted"] else 0)
        if check.get("prediction"):
            self.prediction_score.set(check["prediction"]["score"])

    def show_verdict(self, verdict: dict) -> None:
        """Show the fleet's verdict as its judge published it (service/worker/fleet_drift.py).

        An instance that does not judge runs no check, so without this its gauges would say what
        it last saw itself: nothing (0) on an instance that never judged, and a former judge's
        last check, frozen, after it lost the lease. `max(mlguard_drift_detected)` would then keep
        an alert firing after the fleet's drift ended. The check counters and durations are left
        alone: they count the checks this instance ran.
        """
        status = verdict.get("status") or {}
        self.show_check(verdict.get("policy_state") == "drifted", status)
        if status.get("window_rows") is not None:
            self.window_rows.set(status["window_rows"])
        if status.get("shadow_agreement") is not None:
            self.shadow_agreement.set(status["shadow_agreement"])

FEEDBACK_OUTCOMES = ("recorded", "duplicate", "conflict", "pending", "unknown", "invalid")
LABEL_DELAY_BUCKETS = (60.0, 600.0, 3600.0, 6 * 3600.0, 86_400.0, 3 * 86_400.0, 7 * 86_400.0,
                       30 * 86_400.0, 90 * 86_400.0)


class StoreMetrics:
    """The API workers' prediction log and feedback (service/store/, service/api/records.py)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.log_rows = Counter(
            "mlguard_prediction_log_rows",
            "Answered predictions for the prediction log, by outcome: written to the store, or "
            "dropped (buffer full, store down too long, shutdown before the flush)",
            ["outcome"], registry=r,
        )
        self.buffer_rows = Gauge(
            "mlguard_prediction_log_buffer_rows", "Rows waiting in the workers' write buffers",
            multiprocess_mode="livesum", registry=r,
        )
        self.store_up = Gauge(
            "mlguard_store_up", "1 while the last write to the store succeeded",
            multiprocess_mode="livemin", registry=r,
        )
        self.feedback = Counter(
            "mlguard_feedback", "Outcomes posted to /feedback, by result", ["outcome"], registry=r
        )
        self.label_delay = Histogram(
            "mlguard_label_delay_seconds", "Time from a prediction to its outcome's arrival",
            buckets=LABEL_DELAY_BUCKETS, registry=r,
        )
        for outcome in ("written", "dropped"):  # at 0 from the start, so increase() sees the first
            self.log_rows.labels(outcome)
        for outcome in FEEDBACK_OUTCOMES:
            self.feedback.labels(outcome)


class PerformanceMetrics:
    """Live performance, published by the monitoring process (one writer: "mostrecent")."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.realized = Gauge(
            "mlguard_realized_metric", "A metric on the labelled window, by route that answered",
            ["route", "metric"], multiprocess_mode="mostrecent", registry=r,
        )
        self.delta = Gauge(
            "mlguard_model_vs_rules_delta",
            "Model minus rules on the yardstick's metric over labelled model-answered rows "
            "(positive: the model is better), with the interval's bounds",
            ["metric", "bound"], multiprocess_mode="mostrecent", registry=r,
        )
        self.estimated = Gauge(
            "mlguard_estimated_metric", "Label-free estimate of the model's metric on recent rows (CBPE)",
            ["metric"], multiprocess_mode="mostrecent", registry=r,
        )
        self.coverage = Gauge(
            "mlguard_label_coverage", "Share of the window's predictions that have an outcome",
            multiprocess_mode="mostrecent", registry=r,
        )
        self.labelled = Gauge(
            "mlguard_labelled_rows", "Labelled predictions in the performance window",
            multiprocess_mode="mostrecent", registry=r,
        )
        self.below_rules = Gauge(
            "mlguard_performance_below_rules",
            "1 while the performance policy says the model is worse than the rules",
            multiprocess_mode="mostrecent", registry=r,
        )
        self.checks = Counter(
            "mlguard_performance_checks", "Performance checks, by outcome: ok, insufficient, error",
            ["outcome"], registry=r,
        )
        for outcome in ("ok", "insufficient", "error"):
            self.checks.labels(outcome)
