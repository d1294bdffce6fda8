"""The heuristic protocol: what a rule-based fallback must provide.

"Be the algorithm": the rules are written first, by hand, and stay the yardstick the model must
beat. They answer the same question as the model, in the plug-in's task, and say which rules fired
so that every fallback answer can be explained.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class HeuristicResult:
    """What the rules answer for one row; fill in the field of the plug-in's task.

    - binary: `probability` of the positive class (in [0, 1]);
    - multiclass: `label`, one of the declared classes, and optionally `probabilities`
      (class -> probability, summing to 1); without them the label gets probability 1;
    - regression: `value`, a finite number.
    `rules` names the rules that fired, in the order they fired: it is returned to the client.
    """

    probability: float | None = None
    rules: tuple[str, ...] = ()
    label: str | None = None
    probabilities: Mapping[str, float] | None = None
    value: float | None = None


class Heuristic(Protocol):
    """The rules of a plug-in. Implement `score`; set `name` (it appears in logs).

    `score` must be total and deterministic: for every schema-valid row, missing values and
    unknown categories included, it returns an answer of the task's kind, and the same row always
    gets the same answer. It receives the request row as clients send it (field aliases as the
    keys, `None` for a missing value), not the model's derived features. It must not do I/O: it
    runs on the request path, and, beside the model, on every model-routed row for the shadow
    agreement. If it raises or answers out of range, the configured safe default answers instead
    (`route: default`, reason `heuristic.error`).
    """

    name: str

    def score(self, row: Mapping[str, Any]) -> HeuristicResult:
        """Answer one row."""
        ...
