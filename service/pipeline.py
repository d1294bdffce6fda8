"""The guarded pipeline: plain Python that BentoML calls, testable without a server.

rows ─ input checks ─ router ─┬─ circuit ─ model (deadline, concurrency) ─ output checks ─┐
                              └─ heuristic ◄─────────────────────── on any failure ──────┘
                                   └─ safe default if the rules fail ─ record ─ answer
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from fallbacks.base import Heuristic, SafeDefault
from monitors import reasons
from monitors.circuit import CircuitBreaker, Permit
from monitors.input_checks import InputChecker, Violation
from monitors.output_checks import is_valid_probability
from monitors.reference import ReferenceStats
from service.config import Settings
from service.model_call import DeadlineModelCall, ModelOutcome
from service.prediction import ROUTE_DEFAULT, ROUTE_HEURISTIC, ROUTE_MODEL, Prediction
from service.router import RoutingState, reasons_against_model

log = logging.getLogger("mlguard.pipeline")


class Recorder:
    """Where answered predictions go (metrics, logs, drift window); the default drops them."""

    def record(
        self,
        rows: list[dict[str, Any]],
        predictions: list[Prediction],
        violations: list[list[Violation]],
    ) -> None: ...

    def record_model_call(self, outcome: ModelOutcome) -> None: ...


class GuardedPipeline:
    def __init__(
        self,
        heuristic: Heuristic,
        model_call: DeadlineModelCall,
        model_version: str,
        reference: ReferenceStats,
        settings: Callable[[], Settings],
        routing_state: Callable[[Settings], RoutingState],
        recorder: Recorder | None = None,
        circuit: CircuitBreaker | None = None,
    ) -> None:
        self.heuristic = heuristic
        self.model_call = model_call
        self.model_version = model_version
        self.reference = reference
        self._settings = settings
        self._routing_state = routing_state
        self.recorder = recorder or Recorder()
        self.circuit = circuit or CircuitBreaker(lambda: self._settings().circuit)
        self._checker = InputChecker(reference, settings().input_checks.range_tolerance)

    def _checker_for(self, cfg: Settings) -> InputChecker:
        # Rebuilt only when the tolerance is changed by a reload.
        if self._checker.range_tolerance != cfg.input_checks.range_tolerance:
            self._checker = InputChecker(self.reference, cfg.input_checks.range_tolerance)
        return self._checker

    async def predict(self, rows: list[dict[str, Any]]) -> list[Prediction]:
        started = time.perf_counter()
        cfg = self._settings()
        state = self._routing_state(cfg)
        checker = self._checker_for(cfg)
        verdicts = [checker.check(row) for row in rows]
        answers: list[Prediction | None] = [None] * len(rows)
        row_reasons = [reasons_against_model(state, v) for v in verdicts]

        to_model = [i for i, found in enumerate(row_reasons) if not found]
        if to_model:
            permit = self.circuit.allow()
            if permit is None:  # the circuit is open: the model is not called
                for i in to_model:
                    row_reasons[i].append(reasons.CIRCUIT_OPEN)
            else:
                await self._call_model(permit, rows, to_model, answers, row_reasons, cfg)

        for i, answer in enumerate(answers):
            if answer is None:
                answers[i] = self._fallback(rows[i], row_reasons[i], cfg)

        per_row = (time.perf_counter() - started) / len(rows)
        for answer in answers:
            answer.seconds = per_row
        self.recorder.record(rows, answers, verdicts)
        return answers

    async def _call_model(
        self,
        permit: Permit,
        rows: list[dict[str, Any]],
        to_model: list[int],
        answers: list[Prediction | None],
        row_reasons: list[list[str]],
        cfg: Settings,
    ) -> None:
        outcome: ModelOutcome | None = None
        try:
            outcome = await self.model_call(
                [rows[i] for i in to_model],
                cfg.model.timeout_ms / 1000.0,
                cfg.model.max_concurrency,
            )
        finally:
            if outcome is None:  # cancelled (client gone): the permit must not leak
                self.circuit.on_skipped(permit)
        self.recorder.record_model_call(outcome)
        healthy = self._accept_model_answers(outcome, to_model, answers, row_reasons, cfg)
        if outcome.failure == reasons.MODEL_OVERLOADED:  # never ran: says nothing of the model
            self.circuit.on_skipped(permit)
        elif healthy:
            self.circuit.on_success(permit)
        else:  # errors, timeouts and invalid outputs all count against the model
            self.circuit.on_failure(permit)

    def _accept_model_answers(
        self,
        outcome: ModelOutcome,
        to_model: list[int],
        answers: list[Prediction | None],
        row_reasons: list[list[str]],
        cfg: Settings,
    ) -> bool:
        """Fill in the model's valid answers; True when every row got one."""
        probs = outcome.probabilities
        if probs is not None and len(probs) != len(to_model):
            outcome = ModelOutcome(None, reasons.OUTPUT_INVALID, "wrong length", outcome.seconds)
        if outcome.probabilities is None:
            failure = reasons.with_detail(outcome.failure, outcome.detail)
            for i in to_model:
                row_reasons[i].append(failure)
            return False
        healthy = True
        for i, p in zip(to_model, outcome.probabilities.tolist()):
            if not is_valid_probability(p):
                row_reasons[i].append(reasons.with_detail(reasons.OUTPUT_INVALID, repr(p)))
                healthy = False
                continue
            answers[i] = Prediction(
                request_id=uuid.uuid4().hex,
                probability=p,
                decision=_decide(p, cfg.decision.threshold),
                route=ROUTE_MODEL,
                model_version=self.model_version,
            )
        return healthy

    def _fallback(self, row: dict[str, Any], found: list[str], cfg: Settings) -> Prediction:
        try:
            result = self.heuristic.score(row)
            if not is_valid_probability(result.probability):
                raise ValueError(f"heuristic returned {result.probability!r}")
        except Exception as exc:  # the rules failing must still leave an answer
            log.exception("heuristic failed; answering the safe default")
            default = SafeDefault(cfg.safe_default.probability, cfg.safe_default.decision)
            return Prediction(
                request_id=uuid.uuid4().hex,
                probability=default.probability,
                decision=default.decision,
                route=ROUTE_DEFAULT,
                reasons=[*found, reasons.with_detail(reasons.HEURISTIC_ERROR, type(exc).__name__)],
                model_version=self.model_version,
                cause=reasons.HEURISTIC_ERROR,
            )
        return Prediction(
            request_id=uuid.uuid4().hex,
            probability=float(result.probability),
            decision=_decide(result.probability, cfg.decision.threshold),
            route=ROUTE_HEURISTIC,
            reasons=found,
            rules=list(result.rules),
            model_version=self.model_version,
            cause=reasons.code_of(found[0]),
        )


def _decide(probability: float, threshold: float) -> str:
    return "decline" if probability >= threshold else "approve"
