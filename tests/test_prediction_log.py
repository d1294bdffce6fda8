"""The per-prediction JSON log line, read from a real two-worker server's output.

The line must really reach the server log inside a BentoML worker (whose logging config drops INFO
by default), one per prediction at `logging.prediction_sample_ratio: 1.0`. The shipped ratio
samples it (the prediction log in the store is the record of every prediction): each test sets
the ratio it needs.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import yaml

from tests.conftest import wait_until
from tests.support.data import GOOD_ROW
from tests.support.server import ServerProcess

RELOADED = "config reloaded: version"


def worker_reloads(server: ServerProcess) -> int:
    # The workers' reloads only: the drift process reloads (and logs) the config too.
    return sum(RELOADED in line and "[entry_service:" in line for line in server.log_text().splitlines())


def set_sample_ratio(server: ServerProcess, edit_config: Callable[[str], None], ratio: float) -> None:
    """Edit the ratio and wait until every worker has reloaded it."""
    cfg = yaml.safe_load(server.config_path.read_text())
    if cfg["logging"]["prediction_sample_ratio"] == ratio:
        return
    cfg["logging"]["prediction_sample_ratio"] = ratio
    seen = worker_reloads(server)
    edit_config(yaml.safe_dump(cfg))
    assert wait_until(lambda: worker_reloads(server) >= seen + server.workers, timeout_s=15)


def prediction_lines(server: ServerProcess) -> dict[str, dict]:
    """Every prediction log line in the server output, by request_id."""
    lines = {}
    for line in server.log_text().splitlines():
        if line.startswith("{") and '"event":"prediction"' in line:
            record = json.loads(line)  # the whole line is one JSON object
            lines[record["request_id"]] = record
    return lines


def test_each_prediction_is_one_json_line_with_its_request_id(
    client: httpx.Client, server: ServerProcess, edit_config: Callable[[str], None]
) -> None:
    set_sample_ratio(server, edit_config, 1.0)
    single = client.post("/predict", json={**GOOD_ROW, "age": 140}).json()
    batch = client.post("/predict_batch", json={"applications": [GOOD_ROW, GOOD_ROW]}).json()
    answers = [single, *batch["predictions"]]
    ids = [a["request_id"] for a in answers]
    assert wait_until(lambda: set(ids) <= prediction_lines(server).keys(), timeout_s=10)
    logged = prediction_lines(server)
    for a in answers:
        line = logged[a["request_id"]]
        assert line["route"] == a["route"]
        assert line["reasons"] == a["reasons"]  # with their detail: this is the log, not a label
        assert line["decision"] == a["decision"]
        assert line["model_version"] == a["model_version"]
        assert line["probability"] == a["probability"]
        assert line["latency_ms"] >= 0 and line["ts"] > 0 and line["pid"] > 0
    assert logged[single["request_id"]]["reasons"] == ["input.out_of_range:age"]
    text = server.log_text()
    assert sum(text.count(i) for i in ids) == len(ids), "each prediction is logged exactly once"


def test_sample_ratio_zero_writes_no_line(
    client: httpx.Client, server: ServerProcess, edit_config: Callable[[str], None]
) -> None:
    set_sample_ratio(server, edit_config, 0.0)

    silent = [client.post("/predict", json=GOOD_ROW).json()["request_id"] for _ in range(10)]
    silent += [
        p["request_id"]
        for p in client.post("/predict_batch", json={"applications": [GOOD_ROW] * 10}).json()["predictions"]
    ]

    # Logging everything; once a later line from every worker is in the output, any line of the
    # silent requests would be there too (each worker's output is written in order).
    set_sample_ratio(server, edit_config, 1.0)
    later: set[str] = set()

    def post_fresh(_: int) -> str:  # a new connection each, so the workers share the burst
        return httpx.post(f"{server.url}/predict", json=GOOD_ROW, timeout=30).json()["request_id"]

    def every_worker_logged_again() -> bool:
        with ThreadPoolExecutor(8) as pool:
            later.update(pool.map(post_fresh, range(8)))
        logged = prediction_lines(server)
        return len({logged[i]["pid"] for i in later if i in logged}) == server.workers

    assert wait_until(every_worker_logged_again, timeout_s=30, interval_s=0.1)
    text = server.log_text()
    assert [i for i in silent if i in text] == []
