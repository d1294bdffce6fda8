"""Inline model calls (service/scoring/model_call.py, InlinePolicy): a version that has shown
itself fast is called on the event loop, without the thread hand-off; anything slow, large, or
under a fault drill goes back to a thread."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from monitors import reasons
from service.scoring.model_call import DeadlineModelCall, InlinePolicy, ModelOutcome, Scored
from service.worker.config import ModelConfig

PROMOTE_AFTER = 8  # a slow call costs 2 of the score, one over 10x the limit all of it


class Model:
    """Answers row["x"] / 100 as version `version`, recording which thread ran each call."""

    def __init__(self) -> None:
        self.version = "m:1"
        self.delay_s = 0.0
        self.error: Exception | None = None
        self.threads: list[str] = []

    def __call__(self, rows: list[dict]) -> Scored:
        self.threads.append(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return Scored(self.version, np.array([r["x"] / 100 for r in rows]))


class Setup:
    def __init__(self, limit_ms: float = 5.0, micro_batching: bool = True) -> None:
        self.model = Model()
        self.limit_ms = limit_ms
        self.policy = InlinePolicy(lambda: self.limit_ms, lambda: self.model.version, PROMOTE_AFTER)
        self.config = ModelConfig(micro_batching=micro_batching, micro_batch_max_rows=8)
        self.call = DeadlineModelCall(self.model, lambda: self.config, self.policy)

    def run(self, n: int, rows: int = 1, timeout_s: float = 2.0) -> list[ModelOutcome]:
        async def calls() -> list[ModelOutcome]:
            return [await self.call([{"x": x} for x in range(rows)], timeout_s, 4) for _ in range(n)]

        return asyncio.run(calls())

    def inline_calls(self, since: int = 0) -> list[bool]:
        return [name == "MainThread" for name in self.model.threads[since:]]


def test_a_fast_version_is_called_inline_after_qualifying_in_threads() -> None:
    for batching in (True, False):
        s = Setup(micro_batching=batching)
        outcomes = s.run(PROMOTE_AFTER + 3)
        assert s.inline_calls() == [False] * PROMOTE_AFTER + [True] * 3
        assert all(o.failure is None and o.version == "m:1" for o in outcomes)
        assert outcomes[-1].raw.tolist() == [0.0]
        assert s.policy.inline
        s.call.shutdown()


def test_slow_calls_cost_the_score_and_one_far_over_the_limit_costs_all_of_it() -> None:
    s = Setup(limit_ms=5.0)
    s.run(PROMOTE_AFTER)
    s.model.delay_s = 0.02  # inline, over the limit: answered, and the score drops below the bar
    (slow,) = s.run(1)
    assert slow.failure is None and not s.policy.inline
    s.model.delay_s = 0.0
    s.run(3)  # two fast threaded calls win the place back
    assert s.inline_calls(PROMOTE_AFTER) == [True, False, False, True]

    s.run(PROMOTE_AFTER)  # a score built up inline absorbs a slow call ...
    s.model.delay_s = 0.02
    s.run(1)
    assert s.policy.inline
    s.model.delay_s = 0.08  # ... but not one over ten times the limit
    s.run(1)
    assert not s.policy.inline
    s.call.shutdown()


def test_a_model_slow_now_and_then_never_qualifies() -> None:
    s = Setup(limit_ms=5.0)
    for _ in range(8):  # one slow call in three: the score never reaches the bar
        s.run(2)
        s.model.delay_s = 0.02
        s.run(1)
        s.model.delay_s = 0.0
    assert s.inline_calls() == [False] * 24
    s.call.shutdown()


def test_no_inline_call_when_switched_off_too_large_or_for_a_new_version() -> None:
    s = Setup(limit_ms=0.0)  # model.inline_max_ms: 0, or a fault drill
    s.run(PROMOTE_AFTER + 2)
    assert s.inline_calls() == [False] * (PROMOTE_AFTER + 2)

    s = Setup()
    s.run(PROMOTE_AFTER)
    s.run(1, rows=9)  # more than micro_batch_max_rows: a thread
    s.run(1, rows=8)
    assert s.inline_calls(PROMOTE_AFTER) == [False, True]
    s.limit_ms = 0.0  # a drill starts: threads at once, and qualification starts over after it
    s.run(1)
    s.limit_ms = 5.0
    s.run(1)
    assert s.inline_calls(PROMOTE_AFTER + 2) == [False, False]
    s.call.shutdown()

    s = Setup()
    s.run(PROMOTE_AFTER)
    s.model.version = "m:2"  # a swap: the new version qualifies on its own calls
    s.run(PROMOTE_AFTER + 1)
    assert s.inline_calls(PROMOTE_AFTER) == [False] * PROMOTE_AFTER + [True]
    s.call.shutdown()


def test_inline_failures_are_the_same_routing_reasons_as_threaded_ones() -> None:
    s = Setup(limit_ms=50.0)
    s.run(PROMOTE_AFTER)
    s.model.error = ZeroDivisionError("boom")
    (failed,) = s.run(1)
    assert (failed.failure, failed.detail) == (reasons.MODEL_ERROR, "ZeroDivisionError")
    s.model.error = None
    s.model.delay_s = 0.03  # inline, past a 10 ms deadline: the late answer is not used
    (late,) = s.run(1, timeout_s=0.01)
    assert late.failure == reasons.MODEL_TIMEOUT and late.raw is None
    assert s.inline_calls(PROMOTE_AFTER) == [True, True]
    s.call.shutdown()
