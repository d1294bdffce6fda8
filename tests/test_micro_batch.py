"""Micro-batching: coalescing, row order, deadlines, errors; and over HTTP against a real server."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from apps.credit.app import CREDIT_APP
from monitors import reasons
from monitors.tasks import OutputPolicy
from service.scoring.micro_batch import MicroBatcher
from service.scoring.model import load_model
from service.scoring.model_call import DeadlineModelCall
from service.worker.config import ModelConfig
from tests.support.data import credit_rows
from tests.support.server import ServerProcess


class GatedModel:
    """A fake batch call: records each batch, answers row["x"] / 100, waits for a gate to open."""

    def __init__(self, error: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.error = error

    async def __call__(self, rows: list[dict]) -> np.ndarray:
        self.batches.append([r["x"] for r in rows])
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return np.array([r["x"] / 100 for r in rows])


def rows_of(*xs: int) -> list[dict]:
    return [{"x": x} for x in xs]


def test_waiting_requests_coalesce_and_each_gets_its_own_rows_in_order() -> None:
    async def scenario() -> tuple[list[list[int]], list[list[float]]]:
        model = GatedModel()
        batcher = MicroBatcher(model)
        first = asyncio.ensure_future(batcher.submit(rows_of(1), 64, 10.0))
        await asyncio.sleep(0)  # the idle batcher starts the first request at once, alone
        rest = [
            asyncio.ensure_future(batcher.submit(rows_of(*xs), 64, 10.0))
            for xs in ((2,), (3, 4, 5), (6,), (7, 8))
        ]
        await asyncio.sleep(0.01)
        model.gate.set()  # the first batch ends: everything waiting goes as one call
        answers = await asyncio.gather(first, *rest)
        return model.batches, [a.tolist() for a in answers]

    batches, answers = asyncio.run(scenario())
    assert batches == [[1], [2, 3, 4, 5, 6, 7, 8]]
    assert answers == [[0.01], [0.02], [0.03, 0.04, 0.05], [0.06], [0.07, 0.08]]


def test_a_full_batch_starts_without_waiting_for_the_running_one() -> None:
    async def scenario() -> list[list[int]]:
        model = GatedModel()
        batcher = MicroBatcher(model)
        tasks = [asyncio.ensure_future(batcher.submit(rows_of(x), 3, 10.0)) for x in range(7)]
        await asyncio.sleep(0.01)
        started = [list(b) for b in model.batches]
        model.gate.set()
        await asyncio.gather(*tasks)
        return started, model.batches

    started, batches = asyncio.run(scenario())
    assert started == [[0], [1, 2, 3], [4, 5, 6]]  # max_rows=3: two full batches left at once
    assert batches == started


def test_the_oldest_waiting_row_waits_at_most_max_wait() -> None:
    async def scenario() -> list[list[int]]:
        model = GatedModel()
        batcher = MicroBatcher(model)
        tasks = [asyncio.ensure_future(batcher.submit(rows_of(x), 64, 0.02)) for x in range(3)]
        await asyncio.sleep(0.2)  # the first batch is still running (gate closed)
        started = [list(b) for b in model.batches]
        model.gate.set()
        await asyncio.gather(*tasks)
        return started

    assert asyncio.run(scenario()) == [[0], [1, 2]]


def test_an_error_reaches_every_waiting_request() -> None:
    async def scenario() -> list[BaseException | np.ndarray]:
        model = GatedModel(error=ValueError("model broke"))
        batcher = MicroBatcher(model)
        tasks = [asyncio.ensure_future(batcher.submit(rows_of(x), 64, 10.0)) for x in range(4)]
        await asyncio.sleep(0.01)
        model.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert len(results) == 4
    assert all(isinstance(r, ValueError) and str(r) == "model broke" for r in results)


def batching_on(max_rows: int = 64, max_wait_ms: float = 5.0) -> ModelConfig:
    return ModelConfig(
        micro_batching=True, micro_batch_max_rows=max_rows, micro_batch_max_wait_ms=max_wait_ms
    )


def slow_model(seconds: float, calls: list[int]):
    def predict(rows: list[dict]) -> np.ndarray:
        calls.append(len(rows))
        time.sleep(seconds)
        return np.array([r["x"] / 100 for r in rows])

    return predict


def test_through_the_deadline_call_concurrent_rows_share_one_model_call() -> None:
    calls: list[int] = []
    call = DeadlineModelCall(slow_model(0.05, calls), lambda: batching_on())

    async def scenario():
        return await asyncio.gather(*(call(rows_of(x), 2.0, 4) for x in range(10)))

    outcomes = asyncio.run(scenario())
    call.shutdown()
    assert [o.raw.tolist() for o in outcomes] == [[x / 100] for x in range(10)]
    assert all(o.failure is None for o in outcomes)
    assert calls == [1, 9]  # the first alone (idle worker), the nine that waited behind it together


def test_a_deadline_still_fires_for_a_request_waiting_in_a_batch() -> None:
    calls: list[int] = []
    call = DeadlineModelCall(slow_model(0.3, calls), lambda: batching_on(max_wait_ms=1000))

    async def scenario():
        first = asyncio.ensure_future(call(rows_of(1), 2.0, 4))
        await asyncio.sleep(0.01)
        # Waits behind the 0.3 s batch with a 0.05 s deadline: it must give up, not wait.
        late = await call(rows_of(2), 0.05, 4)
        return await first, late

    first, late = asyncio.run(scenario())
    call.shutdown()
    assert first.failure is None and first.raw.tolist() == [0.01]
    assert late.raw is None and late.failure == reasons.MODEL_TIMEOUT
    assert calls == [1]  # the timed-out row was dropped before its batch started


def test_errors_and_overload_map_to_the_same_reasons_as_unbatched_calls() -> None:
    def broken(rows: list[dict]) -> np.ndarray:
        raise ZeroDivisionError("boom")

    call = DeadlineModelCall(broken, lambda: batching_on())
    outcomes = asyncio.run(_gather(call, 3, max_concurrency=4))
    call.shutdown()
    assert [(o.failure, o.detail) for o in outcomes] == [(reasons.MODEL_ERROR, "ZeroDivisionError")] * 3

    # One slot, held by a running batch: a second batch cannot start, its rows are overloaded.
    calls: list[int] = []
    call = DeadlineModelCall(slow_model(0.2, calls), lambda: batching_on(max_rows=2))
    outcomes = asyncio.run(_gather(call, 3, max_concurrency=1))
    call.shutdown()
    assert [o.failure for o in outcomes] == [None, reasons.MODEL_OVERLOADED, reasons.MODEL_OVERLOADED]
    assert calls == [1]


def test_a_batch_answered_with_another_number_of_rows_is_invalid_for_every_caller() -> None:
    """Shared out by position, one row short would shift every later caller's answers onto
    another caller: each caller gets output.invalid instead, as an unbatched call would."""
    calls: list[int] = []
    short = slow_model(0.05, calls)

    def one_short(rows: list[dict]) -> np.ndarray:
        return short(rows)[:-1]

    call = DeadlineModelCall(one_short, lambda: batching_on())
    outcomes = asyncio.run(_gather(call, 3, max_concurrency=4))
    call.shutdown()
    assert 2 in calls  # two callers shared a batch (then each was tried alone)
    assert [o.failure for o in outcomes] == [reasons.OUTPUT_INVALID] * 3 and all(o.raw is None for o in outcomes)
    assert outcomes[-1].detail.endswith(f"answers for {calls[-1]} rows")


def test_rows_that_break_the_model_fail_their_own_request_only() -> None:
    """A batch that raised is tried again request by request: the request whose row breaks the
    model gets model.error, the requests batched with it get their answers."""
    calls: list[int] = []
    answer = slow_model(0.05, calls)

    def breaks_on_13(rows: list[dict]) -> np.ndarray:
        if any(r["x"] == 13 for r in rows):
            calls.append(len(rows))
            raise ValueError("row 13")
        return answer(rows)

    call = DeadlineModelCall(breaks_on_13, lambda: batching_on())

    async def scenario():
        return await asyncio.gather(*(call(rows_of(x), 2.0, 4) for x in (1, 13, 2)))

    outcomes = asyncio.run(scenario())
    call.shutdown()
    assert calls[:2] == [1, 2]  # 1 alone (idle worker), then 13 and 2 in one batch, which raised
    assert [o.failure for o in outcomes] == [None, reasons.MODEL_ERROR, None]
    assert [float(o.raw[0]) for o in (outcomes[0], outcomes[2])] == [0.01, 0.02]


async def _gather(call: DeadlineModelCall, n: int, max_concurrency: int):
    return await asyncio.gather(*(call(rows_of(x), 2.0, max_concurrency) for x in range(n)))


def test_large_requests_and_disabled_batching_bypass_the_batcher() -> None:
    calls: list[int] = []
    call = DeadlineModelCall(slow_model(0.0, calls), lambda: batching_on(max_rows=4))
    outcome = asyncio.run(call(rows_of(*range(4)), 2.0, 4))  # not smaller than max_rows
    assert outcome.raw.tolist() == [0.0, 0.01, 0.02, 0.03]
    assert call.batcher.batches == 0
    off = DeadlineModelCall(slow_model(0.0, calls), lambda: ModelConfig(micro_batching=False))
    asyncio.run(_gather(off, 3, max_concurrency=4))
    assert off.batcher.batches == 0 and calls == [4, 1, 1, 1]
    call.shutdown()
    off.shutdown()


def test_concurrent_http_requests_with_micro_batching_match_unbatched_answers(tmp_path) -> None:
    rows = credit_rows()[:48]
    # The unbatched answers: the stored model called on one row at a time, in this process.
    model = load_model(CREDIT_APP, f"{CREDIT_APP.model_name}:latest").model
    policy = OutputPolicy()
    unbatched = [CREDIT_APP.task.from_model(model.predict_rows([row]), policy)[0].score for row in rows]
    server = ServerProcess(
        workdir=tmp_path,
        env={
            "MLGUARD_MODEL__MICRO_BATCHING": "true",
            "MLGUARD_MODEL__MAX_CONCURRENCY": "16",
            "MLGUARD_MODEL__TIMEOUT_MS": "20000",  # a loaded CI machine must not turn this into timeouts
        },
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda row: c.post("/predict", json=row).json(), rows))
    finally:
        server.stop()
    on_model = [i for i, a in enumerate(answers) if a["route"] == "model"]
    assert len(on_model) > 40  # a few rows are out of the training range: the rules answer those
    assert all(answers[i]["reasons"] == [] for i in on_model)
    assert [answers[i]["probability"] for i in on_model] == [unbatched[i] for i in on_model]
