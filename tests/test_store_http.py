"""The prediction log on a real PostgreSQL, reached through a proxy the tests can cut.

One server for the module, with `performance.action: route` and a small labelled window. The
machine's shared PostgreSQL is never stopped: the store is cut by closing the proxy.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import psycopg
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

from apps.credit.app import CREDIT_APP
from tests.support.data import held_out_outcomes, held_out_rows
from tests.support.metrics import scrape, total
from tests.support.postgres import fresh_database, server_address, via_port
from tests.support.server import ServerProcess, shipped_config
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

TOKEN = "store-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SALT = "test-salt"
SMALL_WINDOW = {
    "action: route             # route: while drifted": "action: alert             # route: while drifted",
    "action: alert             # route: while the model": "action: route             # route: while the model",
    "window: 2000": "window: 200",
    "min_labels: 200": "min_labels: 100",
    "check_interval_s: 30": "check_interval_s: 0.5",
    "enter_after: 2            # consecutive \"worse\"": "enter_after: 1            # consecutive \"worse\"",
    "exit_after: 2             # consecutive \"not worse\"": "exit_after: 1             # consecutive \"not worse\"",
    "shadow_ratio: 0.2": "shadow_ratio: 1.0",
    "buffer_rows: 50000": "buffer_rows: 1000",
    "redact: {}": "redact: {income: hash, age: drop}",
}


def config_text() -> str:
    return shipped_config(SMALL_WINDOW)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def proxy(database: str) -> Iterator[TcpProxy]:
    with TcpProxy(*server_address()) as p:
        yield p


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, database: str, proxy: TcpProxy) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        workdir=tmp_path_factory.mktemp("pg_server"),
        config_text=config_text(),
        env={
            "MLGUARD_STORE__URL": via_port(database, proxy.port),
            "MLGUARD_FEEDBACK_TOKEN": TOKEN, "MLGUARD_MONITORING_TOKEN": TOKEN,
            "MLGUARD_ADMIN_TOKEN": TOKEN, "MLGUARD_REDACT_SALT": SALT,
        },
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(pg_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pg_server.url, timeout=30) as c:
        yield c


def predict(client: httpx.Client, rows: list[dict]) -> list[dict]:
    r = client.post("/predict_batch", json={"applications": rows})
    r.raise_for_status()
    return r.json()["predictions"]


def label(client: httpx.Client, predictions: list[dict], outcomes: list[str]) -> None:
    r = client.post("/feedback", headers=AUTH, json={"outcomes": [
        {"request_id": p["request_id"], "outcome": o} for p, o in zip(predictions, outcomes)
    ]})
    r.raise_for_status()
    assert r.json()["counts"]["unknown"] == 0 and r.json()["counts"]["conflict"] == 0


def performance(client: httpx.Client) -> dict:
    """The live performance report; empty while the monitoring process is still starting (503)."""
    r = client.get("/monitoring/performance", headers=AUTH)
    if r.status_code == 503:
        return {}
    r.raise_for_status()
    return r.json()


def set_admin_mode(client: httpx.Client, mode: str) -> None:
    client.post("/admin/routing", headers=AUTH, json={"mode": mode}).raise_for_status()


def test_per_route_metrics_equal_those_of_the_labelled_rows(client, database) -> None:
    on_model = predict(client, held_out_rows(120))
    set_admin_mode(client, "fallback")
    try:
        on_rules = predict(client, held_out_rows(40, start=120))
    finally:
        set_admin_mode(client, "auto")
    assert {p["route"] for p in on_rules} == {"heuristic"}
    label(client, on_model + on_rules, held_out_outcomes(160))
    assert wait_until(lambda: performance(client).get("labelled_rows") == 160, 20)
    report = performance(client)

    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT p.route, p.answer, o.outcome FROM mlguard_predictions p "
            "JOIN mlguard_outcomes o USING (request_id)"
        ).fetchall()
    for route in ("model", "heuristic"):
        picked = [(json.loads(a)["probability"], json.loads(o) == "bad") for r, a, o in rows if r == route]
        p = np.array([x for x, _ in picked])
        y = np.array([int(t) for _, t in picked])
        got = report["by_route"][route]
        assert got["rows"] == len(picked)
        assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert got["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-12)
        assert got["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert report["by_route"]["model"]["rows"] == sum(p["route"] == "model" for p in on_model)
    # The yardstick pairs the model with the rules' shadow on the rows the model answered.
    assert report["model_vs_rules"]["n"] == report["by_route"]["model"]["rows"]
    assert report["coverage"]["labelled"] == 160


def test_inputs_are_redacted_as_configured(client) -> None:
    row = held_out_rows(1, start=300)[0]
    (p,) = predict(client, [row])
    assert wait_until(lambda: client.get(f"/predictions/{p['request_id']}", headers=AUTH).status_code == 200, 10)
    inputs = client.get(f"/predictions/{p['request_id']}", headers=AUTH).json()["inputs"]
    assert "age" not in inputs
    assert inputs["income"] == "sha256:" + hashlib.sha256((SALT + repr(row["income"])).encode()).hexdigest()
    assert inputs["home"] == row["home"]


def test_delete_erases_a_prediction(client) -> None:
    (p,) = predict(client, held_out_rows(1, start=301))
    url = f"/predictions/{p['request_id']}"
    assert wait_until(lambda: client.get(url, headers=AUTH).status_code == 200, 10)
    assert client.delete(url).status_code == 401
    assert client.delete(url, headers=AUTH).json() == {"request_id": p["request_id"], "deleted": True}
    assert client.get(url, headers=AUTH).status_code == 404
    # Deleted again at once: the id is seconds old, so the row might still be on its way (503,
    # retry); once that time is past, there is nothing to erase (404).
    assert client.delete(url, headers=AUTH).status_code == 503
    assert wait_until(lambda: client.delete(url, headers=AUTH).status_code == 404, 30)


def rules_outcome(row: dict) -> str:
    """The changed world: the outcome the rules would decide, whatever the model learned."""
    return "bad" if CREDIT_APP.heuristic.score(row).probability >= 0.5 else "good"


def test_performance_routing_on_a_concept_drift_stream(client, pg_server) -> None:
    # The world changes what a good answer is; the inputs do not move (same population).
    rows = held_out_rows(200, start=400)
    first = predict(client, rows)
    label(client, first, [rules_outcome(r) for r in rows])
    clean = [r for r, p in zip(rows, first) if p["route"] == "model"][:50]  # no input violations
    assert len(clean) == 50
    reason = "performance.below_rules"
    assert wait_until(
        lambda: reason in client.post("/predict", json=clean[0]).json()["reasons"], 20
    ), performance(client)
    report = performance(client)
    assert report["routing_to_fallback"] and report["state"] == "below rules"
    assert report["model_vs_rules"]["high"] < 0
    assert client.get("/monitoring/drift").json()["routing_to_fallback"] is False  # drift is silent

    before = total(scrape(pg_server.url), "mlguard_requests_total", route="heuristic", reason=reason)
    answers = [client.post("/predict", json=row).json() for row in clean]
    assert [a["reasons"] for a in answers] == [[reason]] * 50
    after = total(scrape(pg_server.url), "mlguard_requests_total", route="heuristic", reason=reason)
    assert after - before == 50

    # The world goes back: true outcomes, on rows the rules answer while the model scores in shadow.
    rows = held_out_rows(200, start=650)
    answered = predict(client, rows)
    assert Counter(a["route"] for a in answered) == {"heuristic": 200}
    label(client, answered, held_out_outcomes(200, start=650))
    assert wait_until(
        lambda: client.post("/predict", json=clean[0]).json()["route"] == "model", 20
    ), performance(client)
    assert not performance(client)["routing_to_fallback"]
    back = [client.post("/predict", json=row).json() for row in clean]
    assert [a["route"] for a in back] == ["model"] * 50


def test_store_cut_under_load(client, pg_server, proxy) -> None:
    """Zero non-200 answers while the store is down; rows beyond the buffer are counted as
    dropped, never silently lost; the log resumes when the store returns."""
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def load() -> None:
        rows = held_out_rows(50, start=100)
        with httpx.Client(base_url=pg_server.url, timeout=30) as c:
            while not stop.is_set():
                statuses[c.post("/predict_batch", json={"applications": rows}).status_code] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    proxy.cut()
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: total(scrape(pg_server.url), "mlguard_store_up") == 0, 15)
        assert wait_until(
            lambda: total(scrape(pg_server.url), "mlguard_prediction_log_buffer_rows") > 0, 15)
        down = client.post("/feedback", headers=AUTH, json={"request_id": "0" * 32, "outcome": "bad"})
        assert down.status_code == 503 and "unreachable" in down.json()["error"]
        time.sleep(3)
    finally:
        proxy.restore()
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
    assert set(statuses) == {200} and statuses[200] > 0

    def drained() -> bool:
        m = scrape(pg_server.url)
        return (total(m, "mlguard_prediction_log_buffer_rows") == 0
                and total(m, "mlguard_prediction_log_rows_total") == total(m, "mlguard_requests_total"))

    assert wait_until(drained, 30), scrape(pg_server.url)
    m = scrape(pg_server.url)
    assert total(m, "mlguard_prediction_log_rows_total", outcome="dropped") > 0  # the buffer held 1000
    assert total(m, "mlguard_store_up") == 1
    (p,) = predict(client, held_out_rows(1, start=890))
    assert wait_until(lambda: client.get(f"/predictions/{p['request_id']}", headers=AUTH).status_code == 200, 10)
