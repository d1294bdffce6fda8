"""What the pipeline answers for one row."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitors.tasks import Output

ROUTE_MODEL = "model"
ROUTE_HEURISTIC = "heuristic"
ROUTE_DEFAULT = "default"
UNAVAILABLE = "unavailable"  # model_version while no model version is loaded


@dataclass(slots=True)
class Prediction:
    request_id: str
    output: Output  # the task's answer: probability and decision, probabilities, or value
    route: str
    reasons: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    model_version: str = ""
    cause: str = "none"  # the reason code that decided the route: the metric label
    seconds: float = 0.0  # pipeline time attributed to this row

    def answer(self) -> dict[str, Any]:
        """The JSON answer: the id, the task's fields, then how it was decided."""
        return {
            "request_id": self.request_id,
            **self.output.fields,
            "route": self.route,
            "reasons": self.reasons,
            "rules": self.rules,
            "model_version": self.model_version,
        }
