"""What one drift check found: plain data, no evidently, so workers and tests can read it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ColumnDrift:
    score: float  # the p-value of the column's test
    method: str  # the Evidently stattest name: ks | chisquare
    threshold: float  # drifted when score <= threshold
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    features: dict[str, ColumnDrift]
    drift_share: float  # drifted features / features
    dataset_drift: bool  # drift_share reached the configured share_threshold
    rows: int  # window rows the check judged
    seconds: float  # how long the check took
    prediction: ColumnDrift | None = None  # the model's predictions, when enough rows had one
    checked_at: float = 0.0  # unix time
    drifted_features: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)
