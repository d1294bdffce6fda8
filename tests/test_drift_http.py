"""Drift over real HTTP: a two-worker `bentoml serve` with its drift process, a small window and a
short check interval. A shifted population moves predictions to the rules with `drift.detected`,
normal traffic moves them back; the JSON and the Evidently page are served; a killed drift
process does not stop serving."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apps.credit.app import CREDIT_APP
from service.worker.drift_service import NICENESS
from tests.conftest import MONITORING_TOKEN, wait_until
from tests.support.data import drift_traffic
from tests.support.metrics import scrape, total
from tests.support.prometheus import PrometheusProcess, require_binary, scraping
from tests.support.server import ROOT, ServerProcess, shipped_config

WINDOW = 100
DRIFT_CONFIG = {
    "window_size: 500": f"window_size: {WINDOW}",
    "min_samples: 300": "min_samples: 80",
    "check_interval_s: 10": "check_interval_s: 1",
    "exit_after: 3": "exit_after: 2",
}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="module")
def drift_server(tmp_path_factory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        workdir=tmp_path_factory.mktemp("drift"), workers=2, config_text=shipped_config(DRIFT_CONFIG),
        env={"MLGUARD_MONITORING_TOKEN": MONITORING_TOKEN},  # the report is behind it
    ).start()
    try:
        # Readiness does not wait for the drift process (serving never depends on it).
        assert wait_until(lambda: _status(proc.url) is not None, timeout_s=120, interval_s=1)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(drift_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=drift_server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def prometheus(drift_server: ServerProcess, tmp_path_factory) -> Iterator[PrometheusProcess]:
    """A real Prometheus scraping the drift server every second, with the shipped alert rules."""
    with scraping(
        tmp_path_factory.mktemp("prometheus"),
        targets=[f"127.0.0.1:{drift_server.port}"],
        rule_files=[ROOT / "deploy" / "prometheus" / "alerts.yml"],
    ) as prom:
        yield prom


@pytest.fixture(scope="module")
def traffic() -> dict[str, list[dict]]:
    return drift_traffic(WINDOW)


def _status(url: str) -> dict | None:
    try:
        r = httpx.get(f"{url}/monitoring/drift", timeout=10)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def _send(client: httpx.Client, rows: list[dict]) -> list[dict]:
    r = client.post("/predict_batch", json={"applications": rows})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def _feed_until(client: httpx.Client, rows: list[dict], routing: bool, timeout_s: float = 60) -> dict:
    """Replay rows (bounded by the timeout) until the drift process's verdict is `routing`."""
    deadline = time.monotonic() + timeout_s
    status: dict | None = None
    while time.monotonic() < deadline:
        _send(client, rows)
        time.sleep(0.5)
        status = client.get("/monitoring/drift").json()
        if status["routing_to_fallback"] is routing:
            return status
    raise AssertionError(f"verdict never became routing={routing}: {status}")


def test_status_json_before_and_after_a_judged_window(client, traffic) -> None:
    status = client.get("/monitoring/drift").json()
    assert status["enabled"] is True and status["action"] == "route"
    assert status["window_size"] == WINDOW
    assert isinstance(status["dataset_drift"], bool)
    _send(client, traffic["normal"][:WINDOW])
    assert wait_until(lambda: client.get("/monitoring/drift").json()["checked_at"], timeout_s=20)
    status = client.get("/monitoring/drift").json()
    assert status["window_rows"] == WINDOW
    assert status["dataset_drift"] is False and status["routing_to_fallback"] is False
    assert set(status["features"]) == set(CREDIT_APP.features.names)
    for feature in status["features"].values():
        assert set(feature) == {"score", "method", "threshold", "drifted"}
        assert feature["method"] in {"ks", "chisquare"} and feature["threshold"] == 0.001
    assert re.match(r"\d{4}-\d\d-\d\dT", status["checked_at"])
    assert 0.0 <= status["drift_share"] <= 1.0
    assert 0.0 < status["shadow_agreement"] <= 1.0 and status["shadow_agreement_baseline"] > 0.5


def test_shifted_population_routes_to_rules_and_normal_traffic_back(client, traffic, prometheus) -> None:
    assert [p["route"] for p in _send(client, traffic["shifted"][:5])].count("model") >= 4

    status = _feed_until(client, traffic["shifted"], routing=True)
    assert status["dataset_drift"] is True and status["policy_state"] == "drifted"
    assert {"job", "records"} <= {n for n, f in status["features"].items() if f["drifted"]}
    time.sleep(1.5)  # every worker learns the verdict within one check interval (1 s)
    for _ in range(4):  # several requests, so both workers answer
        for p in _send(client, traffic["shifted"][:20]):
            assert p["route"] == "heuristic" and "drift.detected" in p["reasons"], p
            assert p["rules"]
    # Prometheus sees it too, and the shipped alert is on its way (pending: `for: 5m`).
    assert wait_until(lambda: prometheus.value("max(mlguard_drift_detected)") == 1.0, timeout_s=15)
    assert wait_until(
        lambda: prometheus.value('ALERTS{alertname="MlguardDriftDetected", alertstate="pending"}') == 1.0,
        timeout_s=15,
    )
    assert prometheus.value("max(mlguard_drift_share)") >= 0.3

    status = _feed_until(client, traffic["normal"][:WINDOW], routing=False)
    assert status["policy_state"] == "clear"
    time.sleep(1.5)
    for _ in range(4):
        answered = _send(client, traffic["normal"][:20])
        assert not any("drift.detected" in p["reasons"] for p in answered)
        assert sum(p["route"] == "model" for p in answered) >= 15
    # Both kinds of check were counted on /metrics (this test made both happen).
    text = client.get("/metrics").text
    assert re.search(r'^mlguard_drift_checks_total\{outcome="drift"\} [1-9]', text, re.MULTILINE)
    assert re.search(r'^mlguard_drift_checks_total\{outcome="no_drift"\} [1-9]', text, re.MULTILINE)


def test_feedback_is_disabled_without_its_token(client) -> None:
    """This server sets no MLGUARD_FEEDBACK_TOKEN: POST /feedback is refused with 403 naming it,
    whatever the header (the monitoring token opens reads only)."""
    for headers in ({}, {"Authorization": "Bearer anything"},
                    {"Authorization": f"Bearer {MONITORING_TOKEN}"}):
        r = client.post("/feedback", headers=headers, json={"request_id": "0" * 32, "outcome": "bad"})
        assert r.status_code == 403 and "MLGUARD_FEEDBACK_TOKEN" in r.json()["error"], r.text


def test_drift_metrics_are_exported(client, traffic) -> None:
    """Every drift gauge is on /metrics once a window was judged (a normal one, judged here)."""
    checked = client.get("/monitoring/drift").json()["checked_at"]
    _send(client, traffic["normal"][:WINDOW])
    assert wait_until(lambda: client.get("/monitoring/drift").json()["checked_at"] != checked,
                      timeout_s=30)
    text = client.get("/metrics").text
    for name in (
        "mlguard_drift_detected", "mlguard_drift_share", "mlguard_drift_window_rows",
        "mlguard_drift_check_duration_seconds_count", "mlguard_shadow_agreement_ratio",
        "mlguard_shadow_agreement_baseline",
    ):
        assert re.search(rf"^{name}(\{{[^}}]*\}})? ", text, re.MULTILINE), name
    assert re.search(r'^mlguard_feature_drift_score\{feature="amount"\} ', text, re.MULTILINE)
    assert re.search(r'^mlguard_drift_checks_total\{outcome="no_drift"\} [1-9]', text, re.MULTILINE)


def test_report_page_renders_without_javascript_errors(client, drift_server, tmp_path) -> None:
    r = client.get("/monitoring/drift/report", timeout=120,
                   headers={"Authorization": f"Bearer {MONITORING_TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Drifted Columns" in r.text and "amount" in r.text
    # Chromium cannot send the token: it opens the page as served (self-contained: no external
    # script or stylesheet).
    page = tmp_path / "report.html"
    page.write_text(r.text)
    chromium = require_binary("chromium")  # skipped without it, except under CI=true
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    errors = [line for line in console if re.search(r"Uncaught|Error", line)]
    assert result.returncode == 0, result.stderr[-2000:]
    assert not errors, "\n".join(errors)
    assert "<svg" in result.stdout  # the page's scripts ran and drew the plots


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _drift_pid(server: ServerProcess) -> int:
    """The drift process: a descendant of this `bentoml serve` started for `credit_risk_drift`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "credit_risk_drift" not in cmd:
                continue
            pid = int(entry.name)
            while pid > 1:
                pid = _parent(pid)
                if pid == server.proc.pid:
                    return int(entry.name)
        except (OSError, ValueError):
            continue
    raise AssertionError("no drift process found")


def test_the_drift_process_yields_the_cpu_to_serving(drift_server) -> None:
    # Monitoring takes what serving leaves: the drift process runs niced; the server, and the
    # API workers it starts, do not.
    assert os.getpriority(os.PRIO_PROCESS, _drift_pid(drift_server)) == NICENESS
    assert os.getpriority(os.PRIO_PROCESS, drift_server.proc.pid) == 0


def _log_totals(server: ServerProcess) -> tuple[float, float, float]:
    """(rows answered, rows written to the log, rows dropped), from /metrics."""
    m = scrape(server.url)
    return (total(m, "mlguard_requests_total"),
            total(m, "mlguard_prediction_log_rows_total", outcome="written"),
            total(m, "mlguard_prediction_log_rows_total", outcome="dropped"))


def test_the_monitoring_process_writes_the_workers_prediction_log(client, drift_server, traffic) -> None:
    answered = _send(client, traffic["normal"][:50])

    def written_by_it() -> bool:
        view = client.get("/admin/state").json()["prediction_log"]
        return view["enabled"] and view["written_by"] == "the monitoring process" and view["written"] > 0

    assert wait_until(written_by_it, timeout_s=15)
    def all_written() -> bool:
        answered_rows, written, dropped = _log_totals(drift_server)
        return written == answered_rows and dropped == 0

    assert wait_until(all_written, timeout_s=15)
    record = client.get(f"/predictions/{answered[0]['request_id']}",
                        headers={"Authorization": f"Bearer {MONITORING_TOKEN}"}).json()
    assert record["answer"]["probability"] == answered[0]["probability"]
    assert record["rules_output"] is not None  # completed by the monitoring process's writer


def test_a_killed_drift_process_does_not_stop_serving(client, drift_server, traffic) -> None:
    os.kill(_drift_pid(drift_server), signal.SIGKILL)
    for _ in range(10):  # the workers keep answering, whatever the drift process does
        answered = _send(client, traffic["normal"][:20])
        assert len(answered) == 20
        assert not any("drift.detected" in p["reasons"] for p in answered)
        time.sleep(0.3)

    def error_counted() -> bool:
        text = client.get("/metrics").text
        return bool(re.search(r'^mlguard_drift_checks_total\{outcome="error"\} [1-9]', text, re.MULTILINE))

    assert wait_until(error_counted, timeout_s=15)
    assert client.get("/readyz").status_code == 200
    # The prediction log loses nothing: whether the workers wrote their rows themselves
    # meanwhile or handed them to the restarted process, every answered row is written.

    def all_written() -> bool:
        answered_rows, written, dropped = _log_totals(drift_server)
        return written == answered_rows and dropped == 0

    assert wait_until(all_written, timeout_s=20)
