"""The fixed vocabulary of reason codes.

Reason codes label metrics, so the set must stay small and closed: detail (a field name, an
exception message) goes after a colon in the answer, never into a metric label.
"""
from __future__ import annotations

CONFIG_FORCED = "config.forced"
ADMIN_FORCED = "admin.forced"
MODEL_UNAVAILABLE = "model.unavailable"
INPUT_OUT_OF_RANGE = "input.out_of_range"
INPUT_UNKNOWN_CATEGORY = "input.unknown_category"
DRIFT_DETECTED = "drift.detected"
PERFORMANCE_BELOW_RULES = "performance.below_rules"
CIRCUIT_OPEN = "circuit.open"
MODEL_OVERLOADED = "model.overloaded"
MODEL_TIMEOUT = "model.timeout"
MODEL_ERROR = "model.error"
OUTPUT_INVALID = "output.invalid"
HEURISTIC_ERROR = "heuristic.error"

ALL = (
    CONFIG_FORCED,
    ADMIN_FORCED,
    MODEL_UNAVAILABLE,
    INPUT_OUT_OF_RANGE,
    INPUT_UNKNOWN_CATEGORY,
    DRIFT_DETECTED,
    PERFORMANCE_BELOW_RULES,
    CIRCUIT_OPEN,
    MODEL_OVERLOADED,
    MODEL_TIMEOUT,
    MODEL_ERROR,
    OUTPUT_INVALID,
    HEURISTIC_ERROR,
)

NONE = "none"  # the metric label of the clean model path


def with_detail(code: str, detail: str | None) -> str:
    return f"{code}:{detail}" if detail else code


def code_of(reason: str) -> str:
    """The bounded part of a reason, fit for a metric label."""
    return reason.split(":", 1)[0]
