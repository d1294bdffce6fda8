"""Three instances of the credit service, one PostgreSQL store: one fleet, one truth.

Each instance has its own state directory and its own BentoML home (its own metrics), so they
share nothing but the database, reached through a proxy the test can cut (the machine's shared
PostgreSQL is never stopped). A long drill: CI and `make test-all` run it.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from apps.credit.app import CREDIT_APP
from apps.credit.data import to_rows
from tests.support.data import (
    held_out_frame,
    held_out_outcomes,
    held_out_rows,
    shifted_population,
)
from tests.support.metrics import scrape, total
from tests.support.postgres import fresh_database, server_address, via_port
from tests.support.server import ServerProcess, descendants, shipped_config
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.drill

TOKEN = "fleet-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INTERVAL_S = 3.0
WINDOW = 100
CONFIG = {
    "window_size: 500": f"window_size: {WINDOW}",
    "min_samples: 300": "min_samples: 80",
    "check_interval_s: 10": f"check_interval_s: {INTERVAL_S:g}",
    "exit_after: 3": "exit_after: 2",
}


def config_text() -> str:
    return shipped_config(CONFIG)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def proxy(database: str) -> Iterator[TcpProxy]:
    with TcpProxy(*server_address()) as p:
        yield p


def instance(tmp_path_factory, database: str, proxy: TcpProxy, name: str) -> ServerProcess:
    return ServerProcess(
        workdir=tmp_path_factory.mktemp(name),
        config_text=config_text(),
        env={"MLGUARD_STORE__URL": via_port(database, proxy.port), "MLGUARD_FEEDBACK_TOKEN": TOKEN,
             "MLGUARD_MONITORING_TOKEN": TOKEN, "MLGUARD_ADMIN_TOKEN": TOKEN,
             "MLGUARD_DRIFT__CLIENT_HEADER": "x-api-key"},
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, database: str, proxy: TcpProxy) -> Iterator[list[ServerProcess]]:
    servers = [instance(tmp_path_factory, database, proxy, name) for name in ("a", "b", "c")]
    try:
        for s in servers:
            s.start()
        assert wait_until(lambda: all(status(s) is not None for s in servers), 120, 1)
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def traffic() -> dict[str, list[dict]]:
    held_out = held_out_frame()
    names = CREDIT_APP.features.names
    shifted = shifted_population(held_out, WINDOW)
    inflated = held_out.tail(300).copy()  # distinct rows whose money fields drift
    for column in ("income", "assets", "debt", "amount", "price", "expenses"):
        inflated[column] = inflated[column] * 1.5
    return {"normal": to_rows(held_out, names), "shifted": to_rows(shifted, names),
            "inflated": to_rows(inflated, names)}


def status(server: ServerProcess) -> dict | None:
    try:
        r = httpx.get(f"{server.url}/monitoring/drift", timeout=10)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def send(server: ServerProcess, rows: list[dict]) -> list[dict]:
    r = httpx.post(f"{server.url}/predict_batch", json={"applications": rows}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def round_robin(servers: list[ServerProcess], rows: list[dict], batch: int = 20) -> None:
    for i in range(0, len(rows), batch):
        send(servers[(i // batch) % len(servers)], rows[i : i + batch])


def judge_of(servers: list[ServerProcess]) -> str | None:
    judges = {(status(s) or {}).get("fleet", {}).get("judge") for s in servers}
    return judges.pop() if len(judges) == 1 else None


def drift_checks(servers: list[ServerProcess]) -> float:
    return sum(total(scrape(s.url), "mlguard_drift_checks_total") for s in servers)


def test_one_judge_runs_one_check_per_interval(fleet, traffic) -> None:
    round_robin(fleet, traffic["normal"][:300])
    assert wait_until(lambda: judge_of(fleet) is not None, 60, 1), [status(s) for s in fleet]
    roles = Counter(status(s)["fleet"]["role"] for s in fleet)
    assert roles == {"judge": 1, "follower": 2}
    before, started = drift_checks(fleet), time.monotonic()
    time.sleep(5 * INTERVAL_S)
    intervals = (time.monotonic() - started) / INTERVAL_S
    checks = drift_checks(fleet) - before
    print(f"fleet drift checks: {checks:g} in {intervals:.2f} intervals")
    assert abs(checks - intervals) <= 1.5  # one test per interval for the fleet, not three


def test_a_shifted_population_routes_every_instance_and_back(fleet, traffic) -> None:
    def detected_on_every_instance() -> list[float]:
        return [total(scrape(s.url), "mlguard_drift_detected") for s in fleet]

    def all_routing(routing: bool, rows: list[dict]) -> bool:
        round_robin(fleet, rows)
        verdicts = [status(s) for s in fleet]
        return all(v and v["routing_to_fallback"] is routing for v in verdicts)

    assert wait_until(lambda: all_routing(True, traffic["shifted"]), 60, 0.5)
    same = {(status(s)["fleet"]["judge"], status(s)["checked_at"]) for s in fleet}
    assert len({judge for judge, _ in same}) == 1  # one verdict, from one judge
    # Every instance's gauges show it, the followers' too (they run no check themselves).
    assert wait_until(lambda: detected_on_every_instance() == [1, 1, 1], 10, 0.5), detected_on_every_instance()
    for s in fleet:  # its workers learn the verdict at their next flush (within a second)
        assert wait_until(
            lambda s=s: all("drift.detected" in p["reasons"] for p in send(s, traffic["shifted"][:5])), 5)
    assert wait_until(lambda: all_routing(False, traffic["normal"][:200]), 90, 0.5)
    assert wait_until(lambda: detected_on_every_instance() == [0, 0, 0], 10, 0.5), detected_on_every_instance()
    for s in fleet:
        assert wait_until(
            lambda s=s: not any("drift.detected" in p["reasons"] for p in send(s, traffic["normal"][:5])), 5)


def test_one_client_cannot_steer_the_fleet(fleet, traffic) -> None:
    """One API key replaying a few hundred drifted rows through all three instances holds at
    most drift.max_client_share of the fleet's window: routing never switches."""
    round_robin(fleet, traffic["normal"][:200])
    checks_before = drift_checks(fleet)
    deadline = time.monotonic() + 4 * INTERVAL_S
    while time.monotonic() < deadline:
        for i, s in enumerate(fleet):
            rows = traffic["inflated"][i * 100 : (i + 1) * 100]
            r = httpx.post(f"{s.url}/predict_batch", json={"applications": rows},
                           headers={"x-api-key": "one-client"}, timeout=30)
            assert r.status_code == 200
            assert not any("drift.detected" in p["reasons"] for p in r.json()["predictions"])
        assert all(not status(s)["routing_to_fallback"] for s in fleet)
    assert drift_checks(fleet) - checks_before >= 3  # judged all along
    judge = next(status(s) for s in fleet if status(s)["fleet"]["role"] == "judge")
    assert judge["largest_client_share"] <= 0.1 + 1e-9


def test_a_killed_judge_is_replaced_within_two_intervals(fleet, traffic) -> None:
    round_robin(fleet, traffic["normal"][:200])
    assert wait_until(lambda: judge_of(fleet) is not None, 60, 1)
    old_judge = judge_of(fleet)
    judge_pid = int(old_judge.rsplit(":", 1)[1])
    (victim,) = [s for s in fleet if judge_pid in descendants(s.proc.pid)]
    family = [victim.proc.pid, *descendants(victim.proc.pid)]
    killed_at = time.monotonic()
    for pid in family:  # the whole process group: no orphan keeps the lease
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    survivors = [s for s in fleet if s is not victim]

    def new_judge() -> bool:
        judge = judge_of(survivors)
        return judge is not None and judge != old_judge

    assert wait_until(new_judge, 2 * INTERVAL_S + 2, 0.25), [status(s) for s in survivors]
    print(f"new judge after {time.monotonic() - killed_at:.2f} s")
    victim.proc.wait(10)
    victim.start()  # the rest of the module runs on three instances again
    assert wait_until(lambda: status(victim) is not None, 120, 1)


def test_an_outcome_posted_to_another_instance_joins_the_fleet(fleet) -> None:
    a, b, c = fleet
    rows, outcomes = held_out_rows(30, start=500), held_out_outcomes(30, start=500)
    predictions = send(a, rows)
    r = httpx.post(f"{b.url}/feedback", headers=AUTH, timeout=30, json={"outcomes": [
        {"request_id": p["request_id"], "outcome": o} for p, o in zip(predictions, outcomes)]})
    assert r.status_code == 200 and r.json()["counts"]["unknown"] == 0, r.text

    def counted() -> bool:
        got = httpx.get(f"{c.url}/monitoring/performance", headers=AUTH, timeout=30)
        return got.status_code == 200 and (got.json().get("labelled_rows") or 0) >= 30

    assert wait_until(counted, 20 + 30, 1)  # performance.check_interval_s is 30 by default
    record = httpx.get(f"{c.url}/predictions/{predictions[0]['request_id']}", headers=AUTH, timeout=30)
    assert record.json()["outcome"] == outcomes[0]


def test_the_store_cut_under_load_across_the_fleet(fleet, proxy, traffic) -> None:
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def load(server: ServerProcess) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                statuses[c.post("/predict_batch", json={"applications": traffic["normal"][:20]}).status_code] += 1

    threads = [threading.Thread(target=load, args=(s,)) for s in fleet]
    proxy.cut()
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: all(total(scrape(s.url), "mlguard_store_up") == 0 for s in fleet), 20)
        assert wait_until(lambda: all(status(s)["fleet"]["role"] == "local" for s in fleet), 20)
    finally:
        proxy.restore()
        restored = time.monotonic()
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
    assert set(statuses) == {200} and statuses[200] > 0

    def rejoined() -> bool:
        roles = Counter((status(s) or {}).get("fleet", {}).get("role") for s in fleet)
        up = all(total(scrape(s.url), "mlguard_store_up") == 1 for s in fleet)
        return up and roles == {"judge": 1, "follower": 2}

    assert wait_until(rejoined, 10, 0.5), [status(s) for s in fleet]
    print(f"fleet back {time.monotonic() - restored:.2f} s after the store returned")
