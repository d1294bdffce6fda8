"""Every mlguard metric, defined once, with bounded labels.

Names are a public contract (the dashboard and the alert rules query them). Metrics are created
when `Metrics()` is instantiated in a worker, after BentoML has set PROMETHEUS_MULTIPROC_DIR, so
prometheus_client picks its multiprocess value class and counts from all workers add up.

Buckets: the model path costs ~2-5 ms per row here and the rules ~20 us; the deadline defaults
to 250 ms. Buckets run from 0.25 ms to 2.5 s so both paths and a deadline breach are resolved.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
PROBABILITY_BUCKETS = tuple(round(i * 0.05, 2) for i in range(1, 21))


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "mlguard_requests",
            "Predictions answered, by route and by the reason code that decided the route",
            ["route", "reason"],
        )
        self.request_duration = Histogram(
            "mlguard_request_duration_seconds",
            "Pipeline time per prediction (a batch's time is shared out over its rows)",
            ["route"],
            buckets=LATENCY_BUCKETS,
        )
        self.model_duration = Histogram(
            "mlguard_model_duration_seconds",
            "Time inside one model call (a batch is one call)",
            buckets=LATENCY_BUCKETS,
        )
        self.input_violations = Counter(
            "mlguard_input_violations",
            "Input check violations, by check and schema field",
            ["check", "field"],
        )
        self.probability = Histogram(
            "mlguard_prediction_probability",
            "Answered probabilities, by route",
            ["route"],
            buckets=PROBABILITY_BUCKETS,
        )
        self.decisions = Counter(
            "mlguard_decisions", "Decisions answered, by route", ["route", "decision"]
        )
        self.model_info = Gauge(
            "mlguard_model_info", "The model version served", ["model_version"],
            multiprocess_mode="livemax",
        )
        self.routing_mode = Gauge(
            "mlguard_routing_mode", "1 for the routing mode in force", ["mode"],
            multiprocess_mode="livemax",
        )
        self.faults_active = Gauge(
            "mlguard_faults_active", "1 while any fault drill is configured", multiprocess_mode="livemax"
        )
        self.config_reloads = Counter(
            "mlguard_config_reloads", "Config reload attempts, by outcome", ["outcome"]
        )
