"""What the pipeline answers for one row."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from monitors.tasks import Output

ROUTE_MODEL = "model"
ROUTE_HEURISTIC = "heuristic"
ROUTE_DEFAULT = "default"
UNAVAILABLE = "unavailable"  # model_version while no model version is loaded

_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def new_request_id() -> str:
    """32 hex digits, like a UUID: the issue time in milliseconds (12 digits), then 80 random
    bits. The time lets POST /feedback tell an id issued moments ago, whose row may still be in a
    worker's write buffer, from one that was never issued (docs/PERFORMANCE.md)."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def issued_at(request_id: str) -> float | None:
    """When an id from `new_request_id` was issued (epoch seconds); None if it is not one."""
    if not _REQUEST_ID.fullmatch(request_id):
        return None
    return int(request_id[:12], 16) / 1000.0


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
