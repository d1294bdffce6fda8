"""Input checks: does a row look like the data the model was trained on?

A numeric value outside the training range (widened by a tolerance) or a category the model never
saw is not an error, but the model's answer there is an extrapolation nobody validated, so the row
is answered by the rules instead.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitors import reasons
from monitors.reference import ReferenceStats


@dataclass(frozen=True)
class Violation:
    check: str  # a reason code: input.out_of_range or input.unknown_category
    field: str

    @property
    def reason(self) -> str:
        return reasons.with_detail(self.check, self.field)


class InputChecker:
    """Checks rows against reference statistics; bounds are precomputed once per tolerance."""

    def __init__(self, stats: ReferenceStats, range_tolerance: float) -> None:
        self.range_tolerance = range_tolerance
        self._bounds: dict[str, tuple[float, float]] = {}
        for name, s in stats.numeric.items():
            slack = (s.max - s.min) * range_tolerance
            self._bounds[name] = (s.min - slack, s.max + slack)
        self._categories = {name: frozenset(s.categories) for name, s in stats.categorical.items()}

    def check(self, row: Mapping[str, Any]) -> list[Violation]:
        found: list[Violation] = []
        for name, (low, high) in self._bounds.items():
            value = row.get(name)
            # In range first: the common case, decided in one comparison. Missing values (None,
            # NaN) are in the schema's hands; the model handles them.
            if value is None or low <= value <= high or (isinstance(value, float) and math.isnan(value)):
                continue
            found.append(Violation(reasons.INPUT_OUT_OF_RANGE, name))
        for name, known in self._categories.items():
            value = row.get(name)
            # Categories were saved as strings (a bool or int category too).
            if value is not None and (value if isinstance(value, str) else str(value)) not in known:
                found.append(Violation(reasons.INPUT_UNKNOWN_CATEGORY, name))
        return found
