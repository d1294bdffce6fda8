"""Task kinds: what a plug-in's model predicts, and everything that follows from it.

A plug-in declares one of `Binary`, `Multiclass` or `Regression`. The task decides the answer's
shape, the output checks, what the rules return, the safe default, shadow agreement and the
prediction that the drift monitor tests. The pipeline, the metrics and training only ever ask the
task; none of them branches on the kind.

What the model returns for a batch of n rows (the `Model` protocol, service/scoring/model.py):
- binary: n probabilities of the positive class (or an n x 2 array, classes in declared order);
- multiclass: an n x k array of probabilities, columns in the declared class order;
- regression: n values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fallbacks.base import HeuristicResult


@dataclass(slots=True)
class Output:
    """One scorer's answer for one row, in the task's terms."""

    fields: dict[str, Any]  # the task's part of the JSON answer
    decision: str | None = None  # the class decided (a metric label), classification only
    score: float | str | None = None  # what prediction drift tests: probability, class or value


@dataclass(frozen=True)
class OutputPolicy:
    """What judging an answer needs beyond the task: read from the config in force and the
    served model's guard card, once per request."""

    threshold: float = 0.5  # binary: the positive decision at or above this probability
    value_bounds: tuple[float, float] | None = None  # regression: the accepted value range
    agreement_tolerance: float = 0.0  # regression: |model - rules| that still counts as agreeing


class InvalidOutput(ValueError):
    """An answer that fails the task's output checks; the message is the reason's detail."""


def _finite(x: Any) -> bool:
    return isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x)


def _probability(x: Any) -> bool:
    return _finite(x) and 0.0 <= x <= 1.0


def _one_per_row(raw: np.ndarray) -> bool:
    """One number per row: shape (n,) or (n, 1). Anything wider, flattened, would hand each row
    some other row's number."""
    return raw.ndim == 1 or (raw.ndim == 2 and raw.shape[1] == 1)


def _misshapen(raw: np.ndarray, expected: str) -> list[InvalidOutput]:
    return [InvalidOutput(f"shape {raw.shape}, expected {expected}")] * (raw.shape[0] if raw.ndim else 1)


@dataclass(frozen=True)
class Binary:
    """Two classes: the answer is the positive class's `probability` and a `decision`.

    `classes` are the target's values, negative first (e.g. `("good", "bad")`, `("ham", "spam")`):
    the probability is that of `classes[1]`. `decisions` are the words answered for each class
    (e.g. `("deliver", "quarantine")`); by default the class names. The decision is the positive one
    when the probability reaches `decision.threshold` in the config. `safe_default` is the class
    answered when even the rules fail.
    """

    classes: tuple[str, str]
    safe_default: str
    decisions: tuple[str, str] | None = None
    kind: ClassVar[str] = "binary"

    def __post_init__(self) -> None:
        if len(self.classes) != 2 or self.classes[0] == self.classes[1]:
            raise ValueError(f"binary: two distinct classes, got {self.classes!r}")
        if self.decisions is not None and (
            len(self.decisions) != 2 or self.decisions[0] == self.decisions[1]
        ):
            raise ValueError(f"binary: two distinct decisions, got {self.decisions!r}")
        self.check_default(self.safe_default)

    @property
    def decision_names(self) -> tuple[str, str]:
        return self.decisions or self.classes

    @property
    def labels(self) -> tuple[str, ...]:
        """Every decision an answer can carry: bounded metric label values."""
        return self.decision_names

    def check_default(self, answer: Any) -> None:
        if answer not in self.classes:
            raise ValueError(f"safe default must be one of the classes {list(self.classes)}")

    def output(self, probability: float, threshold: float) -> Output:
        decision = self.decision_names[1 if probability >= threshold else 0]
        return Output({"probability": probability, "decision": decision}, decision, probability)

    def from_model(self, raw: np.ndarray, policy: OutputPolicy) -> list[Output | InvalidOutput]:
        if raw.ndim == 2 and raw.shape[1] == 2:
            values = raw[:, 1]
        elif _one_per_row(raw):
            values = raw.reshape(-1)
        else:
            return _misshapen(raw, "a probability per row, or one per class of 2")
        return [
            self.output(p, policy.threshold) if _probability(p) else InvalidOutput(repr(p))
            for p in values.tolist()
        ]

    def from_rules(self, result: HeuristicResult, policy: OutputPolicy) -> Output:
        p = result.probability
        if not _probability(p):
            raise InvalidOutput(f"rules returned probability {p!r}")
        return self.output(float(p), policy.threshold)

    def default(self, answer: Any, policy: OutputPolicy) -> Output:
        return self.output(1.0 if answer == self.classes[1] else 0.0, policy.threshold)

    def from_score(self, score: Any, policy: OutputPolicy) -> Output:
        """An answer rebuilt from its `score` (what the drift feed carries)."""
        return self.output(float(score), policy.threshold)

    def agree(self, model: Output, rules: Output, policy: OutputPolicy) -> bool:
        return model.decision == rules.decision

    def target_index(self, values: np.ndarray) -> np.ndarray:
        """The target column as 0/1 for the positive class (for the yardstick)."""
        return (np.asarray(values).astype(str) == self.classes[1]).astype(int)


@dataclass(frozen=True)
class Multiclass:
    """Three or more classes: the answer is the `decision` (the most probable class) and
    `probabilities` (class -> probability). The model's classes must equal `classes` (checked at
    load); its probability columns are in this order. The rules return a `label`, and may return
    `probabilities` too (otherwise the answered probabilities are 1 for the label, 0 elsewhere).
    """

    classes: tuple[str, ...]
    safe_default: str
    kind: ClassVar[str] = "multiclass"
    sum_tolerance: ClassVar[float] = 1e-6

    def __post_init__(self) -> None:
        if len(self.classes) < 3 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"multiclass: three or more distinct classes, got {self.classes!r}")
        self.check_default(self.safe_default)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classes

    def check_default(self, answer: Any) -> None:
        if answer not in self.classes:
            raise ValueError(f"safe default must be one of the classes {list(self.classes)}")

    def output(self, probabilities: dict[str, float]) -> Output:
        decision = max(self.classes, key=lambda c: probabilities[c])  # ties: the first declared
        return Output({"decision": decision, "probabilities": probabilities}, decision, decision)

    def _check(self, probabilities: list[float]) -> str | None:
        if len(probabilities) != len(self.classes):
            return f"{len(probabilities)} probabilities for {len(self.classes)} classes"
        bad = [p for p in probabilities if not _probability(p)]
        if bad:
            return repr(bad[0])
        if abs(sum(probabilities) - 1.0) > self.sum_tolerance:
            return f"sum {sum(probabilities)!r}"
        return None

    def from_model(self, raw: np.ndarray, policy: OutputPolicy) -> list[Output | InvalidOutput]:
        if raw.ndim != 2:
            return [InvalidOutput(f"shape {raw.shape}")] * (raw.shape[0] if raw.ndim else 1)
        out: list[Output | InvalidOutput] = []
        for row in raw.tolist():
            problem = self._check(row)
            out.append(
                InvalidOutput(problem) if problem else self.output(dict(zip(self.classes, row)))
            )
        return out

    def from_rules(self, result: HeuristicResult, policy: OutputPolicy) -> Output:
        if result.probabilities is not None:
            probs = {c: result.probabilities.get(c) for c in self.classes}
            problem = self._check(list(probs.values()))
            if problem or set(result.probabilities) != set(self.classes):
                raise InvalidOutput(f"rules returned probabilities {result.probabilities!r}")
            return self.output(probs)
        if result.label not in self.classes:
            raise InvalidOutput(f"rules returned label {result.label!r}")
        return self.output({c: 1.0 if c == result.label else 0.0 for c in self.classes})

    def default(self, answer: Any, policy: OutputPolicy) -> Output:
        return self.output({c: 1.0 if c == answer else 0.0 for c in self.classes})

    def from_score(self, score: Any, policy: OutputPolicy) -> Output:
        return Output({"decision": score}, score, score)

    def agree(self, model: Output, rules: Output, policy: OutputPolicy) -> bool:
        return model.decision == rules.decision


@dataclass(frozen=True)
class Regression:
    """A number: the answer is `value`. Output check: finite and within the training target's range
    widened by `output_checks.range_tolerance` of its width (the range is saved with the model).
    Shadow agreement: |model - rules| <= `shadow.tolerance` x the training target's interquartile
    range. `safe_default` is the value answered when even the rules fail.
    """

    safe_default: float
    kind: ClassVar[str] = "regression"
    labels: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.check_default(self.safe_default)

    def check_default(self, answer: Any) -> None:
        if not _finite(answer):
            raise ValueError("safe default must be a finite number")

    def output(self, value: float) -> Output:
        return Output({"value": value}, None, value)

    def from_model(self, raw: np.ndarray, policy: OutputPolicy) -> list[Output | InvalidOutput]:
        if not _one_per_row(raw):
            return _misshapen(raw, "one value per row")
        bounds = policy.value_bounds
        out: list[Output | InvalidOutput] = []
        for v in raw.reshape(-1).tolist():
            if not _finite(v):
                out.append(InvalidOutput(repr(v)))
            elif bounds is not None and not bounds[0] <= v <= bounds[1]:
                out.append(InvalidOutput(f"{v!r} outside [{bounds[0]:.6g}, {bounds[1]:.6g}]"))
            else:
                out.append(self.output(float(v)))
        return out

    def from_rules(self, result: HeuristicResult, policy: OutputPolicy) -> Output:
        if not _finite(result.value):
            raise InvalidOutput(f"rules returned value {result.value!r}")
        return self.output(float(result.value))

    def default(self, answer: Any, policy: OutputPolicy) -> Output:
        return self.output(float(answer))

    def from_score(self, score: Any, policy: OutputPolicy) -> Output:
        return self.output(float(score))

    def agree(self, model: Output, rules: Output, policy: OutputPolicy) -> bool:
        return abs(model.score - rules.score) <= policy.agreement_tolerance


Task = Binary | Multiclass | Regression
