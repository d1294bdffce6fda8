"""A bounded loopback load generator: a fixed list of requests, a fixed number of clients."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from tests.support.data import credit_rows


@dataclass(frozen=True)
class Call:
    path: str
    body: dict
    rows: int  # predictions this call asks for


@dataclass
class Result:
    call: Call
    status: int | None = None  # None when no response came back
    body: dict | list | None = None
    error: Exception | None = None
    done_at: float = 0.0  # time.monotonic() when the answer (or failure) came


@dataclass
class LoadReport:
    results: list[Result] = field(default_factory=list)

    @property
    def predictions_answered(self) -> int:
        return sum(r.call.rows for r in self.results if r.status == 200)


def credit_calls(singles: int, batches: int, batch_size: int) -> list[Call]:
    """Rows of the data set in turn (varied traffic, as in production; the same row replayed
    thousands of times would be drift), single and batch calls interleaved."""
    rows = credit_rows()
    picked = (rows[i % len(rows)] for i in range(singles + batches * batch_size))
    calls = [Call("/predict", next(picked), 1) for _ in range(singles)]
    for i in range(batches):
        batch = {"applications": [next(picked) for _ in range(batch_size)]}
        calls.insert((i * len(calls)) // batches, Call("/predict_batch", batch, batch_size))
    return calls


async def _run(base_url: str, calls: list[Call], concurrency: int, keepalive: bool) -> LoadReport:
    queue: asyncio.Queue[Call] = asyncio.Queue()
    for call in calls:
        queue.put_nowait(call)
    report = LoadReport()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency if keepalive else 0)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                call = queue.get_nowait()
                result = Result(call)
                try:
                    r = await client.post(call.path, json=call.body)
                    result.status, result.body = r.status_code, r.json()
                except httpx.HTTPError as exc:
                    result.error = exc
                result.done_at = loop.time()
                report.results.append(result)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return report


def run_load(base_url: str, calls: list[Call], concurrency: int = 32, keepalive: bool = True) -> LoadReport:
    return asyncio.run(_run(base_url, calls, concurrency, keepalive))
