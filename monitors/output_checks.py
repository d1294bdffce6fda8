"""Output checks: is what the model returned a probability at all?"""
from __future__ import annotations

import math


def is_valid_probability(value: float) -> bool:
    """NaN, infinities and values outside [0, 1] are not probabilities."""
    return isinstance(value, float | int) and math.isfinite(value) and 0.0 <= value <= 1.0
