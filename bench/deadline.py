"""Measures behind model.timeout_ms: model latency under load, and how fast a timeout is answered.

`python -m bench.deadline` (project root, BENTOML_HOME set as in the Makefile). Starts its own
two-worker servers on loopback, prints a JSON summary; docs/FAILURE_MODES.md records a run.

1. model latency under load: no faults, no deadline in the way (10 s), 32 concurrent clients;
   the share of model calls under each bucket of mlguard_model_duration_seconds, and the
   pipeline's time per prediction from the prediction log.
2. timeout answers: every model call delayed 2 s past a 250 ms deadline; the time to answer,
   client side and server side (the pipeline's latency_ms in the prediction log).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from tests.support.data import GOOD_ROW
from tests.support.load import credit_calls, run_load
from tests.support.metrics import scrape
from tests.support.server import ROOT, ServerProcess


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms), "p50": _pct(values_ms, 0.5), "p90": _pct(values_ms, 0.9),
        "p99": _pct(values_ms, 0.99), "max": round(max(values_ms), 2), "mean": round(statistics.mean(values_ms), 2),
    }


def _server(workdir: Path, **sections: dict) -> ServerProcess:
    config = yaml.safe_load((ROOT / "config" / "mlguard.yaml").read_text())
    for name, values in sections.items():
        config[name].update(values)
    # Drift only alerts: the timeout part replays one row, which is drift by any measure.
    env = {"MLGUARD_DRIFT__ACTION": "alert"}
    return ServerProcess(workdir=workdir, workers=2, config_text=yaml.safe_dump(config), env=env).start()


def _logged_latencies(server: ServerProcess) -> list[float]:
    return [
        json.loads(line)["latency_ms"]
        for line in server.log_text().splitlines()
        if line.startswith('{"event":"prediction"')
    ]


def _histogram_shares(server: ServerProcess, name: str) -> dict[str, float]:
    """The share of observations at or under each bucket bound (ms), and the count."""
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (sample, labels), value in scrape(server.url).items()
        if sample == f"{name}_bucket"
    )
    count = buckets[-1][1]
    shares = {f"le_{le * 1000:g}ms": round(v / count, 4) for le, v in buckets if le != float("inf")}
    return {"count": count, **shares}


def model_latency_under_load(workdir: Path, requests: int) -> dict:
    server = _server(workdir, model={"timeout_ms": 10_000})
    try:
        started = time.monotonic()
        report = run_load(server.url, credit_calls(requests, 0, 0), concurrency=32)
        elapsed = time.monotonic() - started
        failed = [(r.status, repr(r.error)) for r in report.results if r.status != 200]
        assert not failed, failed[:5]
        return {
            "requests": requests,
            "requests_per_s": round(requests / elapsed, 1),
            "load_average_1m": round(os.getloadavg()[0], 2),  # the machine is shared: say how busy
            "model_call_share": _histogram_shares(server, "mlguard_model_duration_seconds"),
            "pipeline_ms": _summary(_logged_latencies(server)),
            "answers_by_reason": dict(Counter(
                (r.body["reasons"] or ["none"])[0].split(":")[0] for r in report.results
            )),
        }
    finally:
        server.stop()


def timeout_answers(workdir: Path, requests: int, timeout_ms: float) -> dict:
    server = _server(
        workdir,
        model={"timeout_ms": timeout_ms, "max_concurrency": 256},
        faults={"model_delay_ms": 2000, "model_delay_ratio": 1.0},
        circuit={"enabled": False},
    )
    try:
        client_ms = []
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(requests):  # one at a time: the deadline, not queueing, is measured
                t0 = time.perf_counter()
                body = client.post("/predict", json=GOOD_ROW).json()
                client_ms.append((time.perf_counter() - t0) * 1000)
                assert body["reasons"] == ["model.timeout"], body
        return {
            "timeout_ms": timeout_ms,
            "client_ms": _summary(client_ms),
            "pipeline_ms": _summary(_logged_latencies(server)),
        }
    finally:
        server.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "model_latency_under_load": model_latency_under_load(Path(tmp) / "load", 3000),
            "timeout_answers": timeout_answers(Path(tmp) / "timeout", 60, 250),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
