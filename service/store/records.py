"""The store's data types: what is written, what feedback returns, what is read back."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

OutcomeValue = str | float  # the true class (classification) or the true value (regression)


@dataclass(slots=True)
class PredictionRecord:
    """One answered prediction, as the log keeps it.

    `model_output`, `rules_output` and `answer` hold the task's answer fields, e.g.
    {"probability": 0.3, "decision": "deliver"} (binary), {"decision": ..., "probabilities": {...}}
    (multiclass), {"value": ...} (regression). `model_output` is None when the model did not run,
    `rules_output` when the rules did not; `inputs` is None when inputs are not logged.
    """

    request_id: str
    ts: float  # epoch seconds
    app: str
    model_version: str
    route: str
    cause: str
    reasons: list[str] = field(default_factory=list)
    inputs: dict[str, Any] | None = None
    model_output: dict[str, Any] | None = None
    rules_output: dict[str, Any] | None = None
    answer: dict[str, Any] = field(default_factory=dict)
    # The sender's hashed identity (drift.client_header), for the fleet drift window's
    # per-client cap; None when the deployment identifies no client.
    client: str | None = None


class FeedbackResult(enum.Enum):
    """What became of one posted outcome."""

    RECORDED = "recorded"  # stored against a logged prediction
    DUPLICATE = "duplicate"  # the same outcome was already there: idempotent success
    CONFLICT = "conflict"  # a different outcome is already recorded; nothing changed
    PENDING = "pending"  # no prediction row yet (still buffered): stored, joined when it lands
    UNKNOWN = "unknown"  # no prediction row and pending not allowed: nothing stored


@dataclass(frozen=True, slots=True)
class Outcome:
    """One posted outcome, for `PredictionStore.add_outcomes`."""

    request_id: str
    outcome: OutcomeValue
    received_at: float  # epoch seconds
    pending_ok: bool = False


@dataclass(frozen=True, slots=True)
class LabelledRow:
    """A logged prediction joined with its outcome: one point of the live performance window."""

    request_id: str
    ts: float
    route: str
    model_version: str
    model_output: dict[str, Any] | None
    rules_output: dict[str, Any] | None
    answer: dict[str, Any]
    outcome: OutcomeValue
    received_at: float
    inputs: dict[str, Any] | None = None  # only when asked for (exports)
