"""The heuristic protocol: what a rule-based fallback must provide.

A heuristic answers the same question as the model (a probability of the positive class) and says
which rules fired, so every fallback answer can be explained. It must be total: for every
schema-valid row, missing values and unknown categories included, it returns an answer.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class HeuristicResult:
    probability: float
    rules: tuple[str, ...]


class Heuristic(Protocol):
    name: str

    def score(self, row: Mapping[str, Any]) -> HeuristicResult: ...


@dataclass(frozen=True)
class SafeDefault:
    """The last answer standing when even the rules fail: fixed and configured, never computed."""

    probability: float
    decision: str
