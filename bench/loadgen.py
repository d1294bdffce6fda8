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
    seconds: float = 0.0  # wall time of the measured window
    cpu_seconds: float = 0.0  # the generator's own CPU time in that window
    latencies: list[float] = field(default_factory=list)
    routes: Counter = field(default_factory=Counter)
    server_cpu_seconds: dict[str, float] = field(default_factory=dict)  # by role, filled by the caller


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


async def _connection(
    port: int, requests: list[bytes], rows_per_request: int, stop_at: float, max_requests: int,
    trial: Trial, counter: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at and counter[0] < max_requests:
            i = counter[0]
            counter[0] += 1
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status, body = await _read_response(reader)
            if status != 200:
                trial.errors += 1
                continue
            trial.latencies.append(time.perf_counter() - started)
            trial.requests += 1
            trial.rows += rows_per_request
            for route in ROUTE.findall(body):
                trial.routes[route.decode()] += 1
    except (ConnectionError, asyncio.IncompleteReadError):
        trial.errors += 1
    finally:
        writer.close()


async def _run(
    port: int, requests: list[bytes], rows_per_request: int, concurrency: int, seconds: float,
    max_requests: int,
) -> Trial:
    trial = Trial()
    counter = [0]
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(
        *(
            _connection(port, requests, rows_per_request, wall + seconds, max_requests, trial, counter)
            for _ in range(concurrency)
        )
    )
    trial.seconds = time.perf_counter() - wall
    trial.cpu_seconds = time.process_time() - cpu
    return trial


def run_trial(
    port: int, requests: list[bytes], concurrency: int, seconds: float, *,
    rows_per_request: int = 1, max_requests: int = 1_000_000,
) -> Trial:
    """Measure for `seconds`, bounded by max_requests too."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_run(port, requests, rows_per_request, concurrency, seconds, max_requests))
