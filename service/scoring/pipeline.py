"""The guarded pipeline: plain Python that BentoML calls, testable without a server.

rows ─ features ─ input checks ─ router ─┬─ circuit ─ model (deadline, concurrency) ─ output checks ─┐
                                         └─ heuristic ◄──────────────────────── on any failure ──────┘
                                              └─ safe default if the rules fail ─ record ─ answer

What an answer looks like, what counts as a valid output and what the rules return all follow the
plug-in's task (monitors/tasks.py); the pipeline itself never branches on the kind.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fallbacks.base import Heuristic
from monitors import reasons
from monitors.circuit import CircuitBreaker
from monitors.input_checks import InputChecker, Violation
from monitors.tasks import InvalidOutput, Output, OutputPolicy, Task
from service.scoring.model import LoadedModel, output_policy
from service.scoring.model_call import DeadlineModelCall, ModelOutcome
from service.scoring.prediction import (
    ROUTE_DEFAULT,
    ROUTE_HEURISTIC,
    ROUTE_MODEL,
    UNAVAILABLE,
    Prediction,
    new_request_id,
)
from service.scoring.router import RoutingState, reasons_against_model
from service.spec import GuardedApp
from service.worker.config import Settings

log = logging.getLogger("mlguard.pipeline")


class Recorder:
    """Where answered predictions go (metrics, logs, drift window); the default drops them.

    An extension point: override `record` and `record_model_call`. Both run on the request path,
    after the answers are final, so they must be cheap and must not raise.
    """

    def record(
        self,
        rows: list[dict[str, Any]],
        predictions: list[Prediction],
        violations: list[list[Violation]],
        cfg: Settings,
    ) -> None:
        """Called once per request with every row, its answer, its input violations and the
        config snapshot the request was answered under."""

    def record_model_call(self, outcome: ModelOutcome) -> None:
        """Called once per model call (a batch of rows is one call)."""


class Recorders(Recorder):
    """Several recorders, called in order (metrics first: they are what /metrics counts exactly)."""

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders = recorders
        # Those that do something with a model call (the base class's does nothing).
        self._call_recorders = [
            r for r in recorders if type(r).record_model_call is not Recorder.record_model_call
        ]

    def record(self, rows: list[dict[str, Any]], predictions: list[Prediction],
               violations: list[list[Violation]], cfg: Settings) -> None:
        for recorder in self.recorders:
            recorder.record(rows, predictions, violations, cfg)

    def record_model_call(self, outcome: ModelOutcome) -> None:
        for recorder in self._call_recorders:
            recorder.record_model_call(outcome)


@dataclass(frozen=True)
class _Judging:
    """What judging rows needs from one served version and config snapshot: built when either
    changes, not on every request (docs/BENCHMARKS.md, round 9)."""

    served: LoadedModel | None
    cfg: Settings
    policy: OutputPolicy
    checker: InputChecker | None


class GuardedPipeline:
    def __init__(
        self,
        app: GuardedApp,
        model_call: DeadlineModelCall,
        served: Callable[[], LoadedModel | None],  # the version in force, read once per request
        settings: Callable[[], Settings],
        routing_state: Callable[[Settings], RoutingState],
        recorder: Recorder | None = None,
        circuit: CircuitBreaker | None = None,
        heuristic: Heuristic | None = None,  # default: the app's rules (tests wrap them)
        observe: Callable[[str | None, bool], None] = lambda version, healthy: None,
    ) -> None:
        """`observe(version, healthy)` hears how each model call that ran ended (the rollback
        watch of a freshly swapped version)."""
        self.app = app
        self.task: Task = app.task
        self.heuristic = heuristic or app.heuristic
        self.model_call = model_call
        self._served = served
        self._settings = settings
        self._routing_state = routing_state
        self.recorder = recorder or Recorder()
        self.circuit = circuit or CircuitBreaker(lambda: self._settings().circuit)
        self._judging: _Judging | None = None
        self._observe = observe

    def _judging_for(self, served: LoadedModel | None, cfg: Settings) -> _Judging:
        """The checks in force for this version and config snapshot; the input checker is
        rebuilt only when the version or the tolerance changes, not at every reload."""
        judging = self._judging
        if judging is not None and judging.served is served and judging.cfg is cfg:
            return judging
        tolerance = cfg.input_checks.range_tolerance
        old = judging.checker if judging is not None else None  # a checker implies a served version
        checker: InputChecker | None
        if served is None:  # no reference statistics without a model: the input checks are off
            checker = None
        elif old is not None and judging.served.version == served.version and old.range_tolerance == tolerance:
            checker = old
        else:
            checker = InputChecker(served.card.reference, tolerance)
        self._judging = _Judging(served, cfg, self.policy(served, cfg), checker)
        return self._judging

    def policy(self, served: LoadedModel | None, cfg: Settings) -> OutputPolicy:
        return output_policy(
            served.card if served else None, cfg.decision.threshold,
            cfg.output_checks.range_tolerance, cfg.shadow.tolerance,
        )

    async def predict(self, rows: list[dict[str, Any]]) -> list[Prediction]:
        started = time.perf_counter()
        cfg = self._settings()
        served = self._served()
        state = self._routing_state(cfg)
        judging = self._judging_for(served, cfg)
        policy = judging.policy
        # One pass over the rows, no comprehensions: on Python 3.11 each is a function call of
        # its own, and most requests are one row (docs/BENCHMARKS.md, round 9).
        features_of, checker = self.app.features_of, judging.checker
        features: list[dict[str, Any]] = []
        verdicts: list[list[Violation]] = []
        row_reasons: list[list[str]] = []
        to_model: list[int] = []
        for i, row in enumerate(rows):
            f = features_of(row)
            found = checker.check(f) if checker is not None else []
            features.append(f)
            verdicts.append(found)
            against = reasons_against_model(state, found)
            row_reasons.append(against)
            if not against:
                to_model.append(i)
        answers: list[Prediction | None] = [None] * len(rows)

        if to_model:
            with self.circuit.guard() as call:
                if call.refused:  # the circuit is open: the model is not called
                    for i in to_model:
                        row_reasons[i].append(reasons.CIRCUIT_OPEN)
                else:
                    outcome = await self.model_call(
                        features if len(to_model) == len(rows) else [features[i] for i in to_model],
                        cfg.model.timeout_ms / 1000.0,
                        cfg.model.max_concurrency,
                    )
                    self.recorder.record_model_call(outcome)
                    # The version that computed the answers, which a swap may have just changed.
                    version = outcome.version or (served.version if served else UNAVAILABLE)
                    healthy = self._accept(outcome, to_model, answers, row_reasons, policy, version)
                    call.report(outcome.failure, healthy)
                    if outcome.failure != reasons.MODEL_OVERLOADED:  # it ran: judge it
                        # A failed call (error, timeout) carries no version: it is the served one's.
                        self._observe(version, healthy)

        version = served.version if served else UNAVAILABLE
        for i, answer in enumerate(answers):
            if answer is None:
                answers[i] = self._fallback(rows[i], row_reasons[i], cfg, policy, version)

        per_row = (time.perf_counter() - started) / len(rows)
        for answer in answers:
            answer.seconds = per_row
        self.recorder.record(rows, answers, verdicts, cfg)
        return answers

    def _accept(
        self,
        outcome: ModelOutcome,
        to_model: list[int],
        answers: list[Prediction | None],
        row_reasons: list[list[str]],
        policy: OutputPolicy,
        version: str,
    ) -> bool:
        """Fill in the model's valid answers; True when every row got one."""
        raw = outcome.raw
        if raw is None:
            failure = reasons.with_detail(outcome.failure, outcome.detail)
            for i in to_model:
                row_reasons[i].append(failure)
            return False
        outputs: list[Output | InvalidOutput]
        if raw.ndim == 0 or raw.shape[0] != len(to_model):
            outputs = [InvalidOutput(f"{raw.shape[0] if raw.ndim else 0} answers for {len(to_model)} rows")]
            outputs *= len(to_model)
        else:
            outputs = self.task.from_model(raw, policy)
        healthy = True
        for i, out in zip(to_model, outputs):
            if isinstance(out, InvalidOutput):
                row_reasons[i].append(reasons.with_detail(reasons.OUTPUT_INVALID, str(out)))
                healthy = False
                continue
            answers[i] = Prediction(new_request_id(), out, ROUTE_MODEL, model_version=version)
        return healthy

    def _fallback(
        self, row: dict[str, Any], found: list[str], cfg: Settings, policy: OutputPolicy, version: str
    ) -> Prediction:
        try:
            result = self.heuristic.score(row)
            output = self.task.from_rules(result, policy)
        except Exception as exc:  # the rules failing must still leave an answer
            log.exception("heuristic failed; answering the safe default")
            answer = cfg.safe_default.answer
            default = self.task.default(self.task.safe_default if answer is None else answer, policy)
            return Prediction(
                new_request_id(), default, ROUTE_DEFAULT,
                reasons=[*found, reasons.with_detail(reasons.HEURISTIC_ERROR, type(exc).__name__)],
                model_version=version,
                cause=reasons.HEURISTIC_ERROR,
            )
        return Prediction(
            new_request_id(), output, ROUTE_HEURISTIC,
            reasons=found,
            rules=list(result.rules),
            model_version=version,
            cause=reasons.code_of(found[0]),
        )
