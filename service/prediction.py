"""What the pipeline answers for one row."""
from __future__ import annotations

from dataclasses import dataclass, field

ROUTE_MODEL = "model"
ROUTE_HEURISTIC = "heuristic"
ROUTE_DEFAULT = "default"


@dataclass
class Prediction:
    request_id: str
    probability: float
    decision: str
    route: str
    reasons: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    model_version: str = ""
    cause: str = "none"  # the reason code that decided the route: the metric label
    seconds: float = 0.0  # pipeline time attributed to this row
