"""Graceful shutdown: SIGTERM to the server (as Kubernetes sends it to PID 1) drops no request.

BentoML's circus arbiter passes SIGTERM on to every worker (waiting up to a day for them), and
each worker's uvicorn stops accepting, finishes the requests it holds, then runs the shutdown
hook. Requests in flight at SIGTERM must all complete; later ones may only be refused.
"""
from __future__ import annotations

import json
import re
import signal
import sqlite3
import threading
import time

import httpx
import pytest
import yaml

from tests.conftest import wait_until
from tests.support.answers import CreditAnswer
from tests.support.data import GOOD_ROW
from tests.support.load import credit_calls, run_load
from tests.support.metrics import scrape, total
from tests.support.server import ROOT, ServerProcess

IN_FLIGHT = 32
NO_DRIFT_ROUTING = {"MLGUARD_DRIFT__ACTION": "alert"}  # replayed rows are drift; not this test's subject


def _config(**model_and_faults: dict) -> str:
    config = yaml.safe_load((ROOT / "config" / "mlguard.yaml").read_text())
    for section, values in model_and_faults.items():
        config[section].update(values)
    return yaml.safe_dump(config)


@pytest.fixture
def slow_server(tmp_path):
    """Every model call takes 6 s, within its deadline: all 32 requests are in flight together
    even on a busy machine."""
    text = _config(
        model={"timeout_ms": 20_000, "max_concurrency": 64},
        faults={"model_delay_ms": 6000, "model_delay_ratio": 1.0},
    )
    proc = ServerProcess(workdir=tmp_path, workers=2, config_text=text, env=NO_DRIFT_ROUTING).start()
    yield proc
    proc.stop()


def test_requests_in_flight_at_sigterm_all_complete(slow_server: ServerProcess) -> None:
    results: list[tuple[int, dict, float]] = []
    errors: list[Exception] = []

    def call() -> None:
        try:
            r = httpx.post(f"{slow_server.url}/predict", json=GOOD_ROW, timeout=60)
            results.append((r.status_code, r.json(), time.monotonic()))
        except httpx.HTTPError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    def all_in_flight() -> bool:  # BentoML's own gauge of requests inside the app
        samples = scrape(slow_server.url)
        return total(samples, "bentoml_service_request_in_progress", endpoint="/predict") == IN_FLIGHT

    assert wait_until(all_in_flight, 30, interval_s=0.05)

    slow_server.signal(signal.SIGTERM)  # the arbiter only, as Kubernetes does
    sigterm_at = time.monotonic()
    for t in threads:
        t.join(60)

    assert errors == []
    assert len(results) == IN_FLIGHT
    for status, body, done_at in results:
        assert status == 200
        answer = CreditAnswer.model_validate(body)
        assert answer.route == "model"  # the slow model call itself finished, not a fallback
        assert done_at > sigterm_at
    assert slow_server.proc.wait(60) == 0
    with pytest.raises(httpx.ConnectError):  # gone: nothing new is accepted
        httpx.post(f"{slow_server.url}/predict", json=GOOD_ROW, timeout=5)
    log = slow_server.log_text()
    # Both API workers ran their shutdown hook (other BentoML services may log theirs too).
    assert len(re.findall(r"\[entry_service:[^\]]+\] Completed (?:async )?cleanup hook: shutdown", log)) == 2


@pytest.fixture
def plain_server(tmp_path):
    """Logs every prediction as a JSON line (1% by default): the log says which requests the
    service processed."""
    env = {**NO_DRIFT_ROUTING, "MLGUARD_LOGGING__PREDICTION_SAMPLE_RATIO": "1.0"}
    proc = ServerProcess(workdir=tmp_path, workers=2, env=env).start()
    yield proc
    proc.stop()


def test_sigterm_during_load_loses_no_accepted_request(plain_server: ServerProcess) -> None:
    calls = credit_calls(singles=4000, batches=0, batch_size=0)
    timer = threading.Timer(3.0, plain_server.signal, args=(signal.SIGTERM,))
    timer.start()
    try:
        report = run_load(plain_server.url, calls, concurrency=32, keepalive=False)
    finally:
        timer.cancel()

    answered = [r for r in report.results if r.status is not None]
    refused = [r for r in report.results if r.error is not None]
    assert answered and refused  # the signal really landed mid-load
    assert all(r.status == 200 for r in answered)
    delivered = {CreditAnswer.model_validate(r.body).request_id for r in answered}
    assert plain_server.proc.wait(60) == 0

    # Every prediction the service made reached its client: none was processed and then cut off.
    # The refused ones never reached the app: no connection, or (uvicorn closes a connection
    # accepted in the instant of shutdown before reading its request) closed unread.
    processed = {
        json.loads(line)["request_id"]
        for line in plain_server.log_text().splitlines()
        if line.startswith('{"event":"prediction"')
    }
    assert processed == delivered
    # The workers' write buffers were flushed on the way out: every answer is in the store.
    with sqlite3.connect(plain_server.workdir / "state" / "credit_risk" / "predictions.db") as db:
        stored = {row[0] for row in db.execute("SELECT request_id FROM mlguard_predictions")}
    assert delivered <= stored
    assert all(isinstance(r.error, (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)) for r in refused)
