"""The router: which rows may go to the model, and if not, the reasons why.

Pure and synchronous: it sees the row's input verdict and the routing state, never the model.
Reasons are listed in precedence order; the first one is the one that decided the route.
"""
from __future__ import annotations

from typing import NamedTuple

from monitors import reasons
from monitors.input_checks import Violation


class RoutingState(NamedTuple):
    """Everything beyond the row itself that decides a route, read once per request.

    A NamedTuple, not a frozen dataclass: built on every request, and a frozen dataclass sets
    each field through object.__setattr__ (docs/BENCHMARKS.md, round 9)."""

    config_mode: str  # routing.mode from the config in force: auto | fallback
    admin_mode: str | None = None  # the operator's override, if any: auto | fallback
    drift_active: bool = False  # the drift policy says: route to the rules
    below_rules: bool = False  # live labels say the model is worse than the rules (and action=route)
    model_available: bool = True  # a model version is loaded


def mode_in_force(config_mode: str, admin_mode: str | None) -> str:
    """fallback when either the config or the operator forces it; otherwise auto."""
    return "fallback" if "fallback" in (config_mode, admin_mode) else "auto"


def reasons_against_model(state: RoutingState, violations: list[Violation]) -> list[str]:
    """Empty when the row may go to the model."""
    found: list[str] = []
    if state.config_mode == "fallback":
        found.append(reasons.CONFIG_FORCED)
    if state.admin_mode == "fallback":
        found.append(reasons.ADMIN_FORCED)
    if not state.model_available:
        found.append(reasons.MODEL_UNAVAILABLE)
    if violations:  # a generator is a call of its own, even over nothing
        found.extend(v.reason for v in violations)
    if state.drift_active:
        found.append(reasons.DRIFT_DETECTED)
    if state.below_rules:
        found.append(reasons.PERFORMANCE_BELOW_RULES)
    return found
