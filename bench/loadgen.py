"""A bounded loopback load generator: N keep-alive connections, each one request at a time.

Raw HTTP/1.1 over asyncio streams with pre-encoded requests, because the generator shares the two
cores with the server: httpx costs several hundred microseconds of CPU per request, this about a
tenth of that. Its own CPU time is measured and reported with every trial, so a reader can check
that it stayed far from a full core.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field

try:  # the event loop BentoML's server runs on too; a cheaper generator
    from uvloop import new_event_loop
except ImportError:  # pragma: no cover - uvloop comes with BentoML
    new_event_loop = asyncio.new_event_loop

ROUTE = re.compile(rb'"route":\s*"(\w+)"')


@dataclass
class Trial:
    requests: int = 0  # answered with 200
    rows: int = 0  # rows answered (a batch request answers many)
    errors: int = 0  # non-200 answers or broken connections
    seconds: float = 0.0  # run_trial: the window's wall time; run_alternating: the side's own time
    rows_per_s: float = 0.0  # the throughput it measured (run_trial, run_alternating say how)
    cpu_seconds: float = 0.0  # the generator's own CPU time in that window
    latencies: list[float] = field(default_factory=list)
    routes: Counter = field(default_factory=Counter)
    server_cpu_seconds: dict[str, float] = field(default_factory=dict)  # by role, filled by the caller


class RequestCycle:
    """Pre-encoded requests, handed out in turn and continued from one trial to the next.

    Restarting every trial at the first request would send the same few dozen rows again and
    again at concurrency 1: a shift in the served distribution that the drift monitor rightly
    catches, and then routes to the rules.
    """

    def __init__(self, requests: list[bytes]) -> None:
        self._requests = requests
        self._next = 0

    def __len__(self) -> int:
        return len(self._requests)

    def take(self) -> bytes:
        request = self._requests[self._next % len(self._requests)]
        self._next += 1
        return request


def encode_post(port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    return status, await reader.readexactly(length)


@dataclass
class Target:
    """One server's side of a trial: where to send, what, and how many rows a request answers."""

    port: int
    requests: RequestCycle
    rows_per_request: int = 1


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target,
                    trial: Trial) -> tuple[float, int]:
    """One request and its answer, recorded in the trial: (seconds it took, rows answered)."""
    started = time.perf_counter()
    writer.write(target.requests.take())
    status, body = await _read_response(reader)
    took = time.perf_counter() - started
    if status != 200:
        trial.errors += 1
        return took, 0
    trial.latencies.append(took)
    trial.requests += 1
    trial.rows += target.rows_per_request
    for route in ROUTE.findall(body):
        trial.routes[route.decode()] += 1
    return took, target.rows_per_request


async def _connection(target: Target, started: float, stop_at: float, trial: Trial) -> float:
    """Requests one at a time until stop_at; returns this connection's rows over the time to its
    last answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    rows, last = 0, started
    try:
        while time.perf_counter() < stop_at:
            rows += (await _exchange(reader, writer, target, trial))[1]
            last = time.perf_counter()
    except (ConnectionError, asyncio.IncompleteReadError):
        trial.errors += 1
    finally:
        writer.close()
    return rows / (last - started) if last > started else 0.0


async def _run(target: Target, concurrency: int, seconds: float) -> Trial:
    trial = Trial()
    cpu, wall = time.process_time(), time.perf_counter()
    rates = await asyncio.gather(
        *(_connection(target, wall, wall + seconds, trial) for _ in range(concurrency))
    )
    trial.seconds = time.perf_counter() - wall
    trial.rows_per_s = sum(rates)
    trial.cpu_seconds = time.process_time() - cpu
    return trial


async def _alternate(targets: list[Target], seconds: float) -> list[Trial]:
    trials = [Trial() for _ in targets]
    connections = [await asyncio.open_connection("127.0.0.1", t.port) for t in targets]
    cpu, stop_at = time.process_time(), time.perf_counter() + seconds
    try:
        while time.perf_counter() < stop_at:
            for (reader, writer), target, trial in zip(connections, targets, trials):
                trial.seconds += (await _exchange(reader, writer, target, trial))[0]
    except (ConnectionError, asyncio.IncompleteReadError):
        for trial in trials:
            trial.errors += 1
    finally:
        for _, writer in connections:
            writer.close()
    busy = sum(t.seconds for t in trials) or 1.0
    for trial in trials:  # the generator's CPU, shared out by the time each side took
        trial.cpu_seconds = (time.process_time() - cpu) * trial.seconds / busy
        trial.rows_per_s = trial.rows / trial.seconds if trial.seconds else 0.0
    return trials


def run_trial(target: Target, concurrency: int, seconds: float) -> Trial:
    """Measure one server for `seconds` with `concurrency` connections.

    Its rows per second is the sum over connections of each one's rows over the time to its own
    last answer. Rows over the trial's wall time would bill every connection for the wait on the
    slowest last answer (up to a p99 at concurrency 16: a tenth of a short trial, and a different
    tenth every time).
    """
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_run(target, concurrency, seconds))


def merge(parts: list[Trial]) -> Trial:
    """One side's slices of equal length (bench/run.py interleaves sides slice by slice) as one
    trial: counts, times and latencies summed, throughput the mean of the slices'."""
    whole = Trial()
    for part in parts:
        whole.requests += part.requests
        whole.rows += part.rows
        whole.errors += part.errors
        whole.seconds += part.seconds
        whole.cpu_seconds += part.cpu_seconds
        whole.latencies.extend(part.latencies)
        whole.routes.update(part.routes)
        for role, cpu in part.server_cpu_seconds.items():
            whole.server_cpu_seconds[role] = whole.server_cpu_seconds.get(role, 0.0) + cpu
    whole.rows_per_s = sum(p.rows_per_s for p in parts) / len(parts) if parts else 0.0
    return whole


def run_alternating(targets: list[Target], seconds: float) -> list[Trial]:
    """Concurrency 1 on several servers at once, request by request in turn, for `seconds`.

    Only one server works at any moment, and consecutive requests to each side are a few
    milliseconds apart, so every side meets the same machine: the finest A B A B interleaving.
    A side's `seconds` is the time its own requests took, so its throughput is what one
    connection to it alone would see.
    """
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_alternate(targets, seconds))
