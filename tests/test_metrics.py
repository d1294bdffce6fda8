"""The Prometheus metrics on BentoML's /metrics, against the two-worker session server.

The names, types and labels are a public contract (the dashboard and the alert rules use them);
every prediction is counted once whichever worker answered it, and a 400 is not a prediction.
"""
from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from apps.credit.app import CREDIT_APP
from monitors import reasons
from monitors.metrics import LATENCY_BUCKETS
from tests.conftest import wait_until
from tests.support.data import GOOD_ROW, credit_rows
from tests.support.prometheus import require_binary
from tests.support.server import ServerProcess
from tests.test_prediction_log import set_sample_ratio

# name (as the parser reports the family) -> (type, label names other than `le`)
CONTRACT = {
    "mlguard_requests": ("counter", {"route", "reason"}),
    "mlguard_request_duration_seconds": ("histogram", {"route"}),
    "mlguard_model_duration_seconds": ("histogram", set()),
    "mlguard_input_violations": ("counter", {"check", "field"}),
    "mlguard_prediction_probability": ("histogram", {"route"}),
    "mlguard_decisions": ("counter", {"route", "decision"}),
    "mlguard_model_info": ("gauge", {"model_version"}),
    "mlguard_routing_mode": ("gauge", {"mode"}),
    "mlguard_config_reloads": ("counter", {"outcome"}),
    "mlguard_faults_active": ("gauge", set()),
    "mlguard_model_loaded": ("gauge", set()),
}
ROUTES = {"model", "heuristic", "default"}
OUT_OF_RANGE = {**GOOD_ROW, "age": 140}  # valid for the schema (<= 150), far past training ages
UNKNOWN_HOME = {**GOOD_ROW, "home": "houseboat"}  # a category the model never saw


def families(client: httpx.Client) -> dict[str, object]:
    text = client.get("/metrics").text
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("mlguard_")}


def total(client: httpx.Client, sample: str, **labels: str) -> float:
    """Sum of one sample name over the label sets that include `labels`."""
    want = set(labels.items())
    return sum(
        s.value
        for f in families(client).values()
        for s in f.samples
        if s.name == sample and want <= set(s.labels.items())
    )


def by_labels(client: httpx.Client, sample: str, *names: str) -> Counter:
    counts: Counter = Counter()
    for f in families(client).values():
        for s in f.samples:
            if s.name == sample:
                counts[tuple(s.labels[n] for n in names)] += s.value
    return counts


def expected_label(answer: dict) -> tuple[str, str]:
    """(route, reason) as the metric must label this answer: the decisive code, no detail."""
    if answer["route"] == "default":
        return "default", reasons.HEURISTIC_ERROR
    code = reasons.code_of(answer["reasons"][0]) if answer["reasons"] else reasons.NONE
    return answer["route"], code


def test_names_types_labels_and_buckets_are_the_contract(client: httpx.Client) -> None:
    for row in (GOOD_ROW, OUT_OF_RANGE):
        assert client.post("/predict", json=row).status_code == 200
    found = families(client)
    for name, (kind, labels) in CONTRACT.items():
        assert name in found, f"{name} missing from /metrics"
        assert found[name].type == kind, name
        for s in found[name].samples:
            assert set(s.labels) - {"le"} == labels, (s.name, s.labels)
            if kind == "counter":  # the exposed name, as PromQL sees it
                assert s.name == f"{name}_total", s.name
    assert by_labels(client, "mlguard_model_info", "model_version")
    assert total(client, "mlguard_model_loaded") == 1  # the store's model is served
    # A binary plug-in answers probabilities: the regression value histogram stays empty.
    assert not ("mlguard_prediction_value" in found and found["mlguard_prediction_value"].samples)
    assert set(by_labels(client, "mlguard_config_reloads_total", "outcome")) >= {
        ("success",), ("failure",),
    }

    def bounds(sample: str) -> list[float]:
        return sorted({float(s.labels["le"]) for s in found[sample].samples if "le" in s.labels})

    assert bounds("mlguard_request_duration_seconds") == [*LATENCY_BUCKETS, float("inf")]
    assert bounds("mlguard_model_duration_seconds") == [*LATENCY_BUCKETS, float("inf")]
    assert bounds("mlguard_prediction_probability") == [
        pytest.approx(0.05 * i) for i in range(1, 21)
    ] + [float("inf")]


def test_label_values_stay_bounded(client: httpx.Client) -> None:
    for row in (GOOD_ROW, OUT_OF_RANGE, UNKNOWN_HOME):
        assert client.post("/predict", json=row).status_code == 200
    requests = by_labels(client, "mlguard_requests_total", "route", "reason")
    assert {route for route, _ in requests} <= ROUTES
    assert {reason for _, reason in requests} <= {*reasons.ALL, reasons.NONE}
    assert not [r for _, r in requests if ":" in r], "a detail leaked into a label"
    violations = by_labels(client, "mlguard_input_violations_total", "check", "field")
    assert {c for c, _ in violations} == {reasons.INPUT_OUT_OF_RANGE, reasons.INPUT_UNKNOWN_CATEGORY}
    assert {f for _, f in violations} <= set(CREDIT_APP.features.names)
    decisions = by_labels(client, "mlguard_decisions_total", "route", "decision")
    assert {d for _, d in decisions} <= {"approve", "decline"}


def test_rows_are_labelled_with_route_and_the_code_of_their_first_reason(
    client: httpx.Client,
) -> None:
    before = by_labels(client, "mlguard_requests_total", "route", "reason")
    bad_field = total(client, "mlguard_input_violations_total", field="age", check="input.out_of_range")
    answers = [client.post("/predict", json=row).json() for row in (GOOD_ROW, OUT_OF_RANGE, UNKNOWN_HOME)]
    assert answers[1]["reasons"] == ["input.out_of_range:age"]
    assert answers[2]["reasons"] == ["input.unknown_category:home"]
    after = by_labels(client, "mlguard_requests_total", "route", "reason")
    assert after - before == Counter(expected_label(a) for a in answers)
    assert after[("heuristic", "input.out_of_range")] - before[("heuristic", "input.out_of_range")] == 1
    assert total(client, "mlguard_input_violations_total", field="age", check="input.out_of_range") == bad_field + 1


def test_forced_fallback_counts_the_deciding_reason_only(
    client: httpx.Client, server: ServerProcess, edit_config: Callable[[str], None]
) -> None:
    cfg = yaml.safe_load(server.config_path.read_text())
    cfg["routing"]["mode"] = "fallback"
    edit_config(yaml.safe_dump(cfg))
    # livemax: the max over workers, so "auto" reads 0 only once every worker has reloaded.
    assert wait_until(
        lambda: total(client, "mlguard_routing_mode", mode="auto") == 0
        and total(client, "mlguard_routing_mode", mode="fallback") == 1,
        timeout_s=15,
    )
    before = by_labels(client, "mlguard_requests_total", "route", "reason")
    answer = client.post("/predict", json=OUT_OF_RANGE).json()
    assert answer["route"] == "heuristic"
    assert answer["reasons"] == ["config.forced", "input.out_of_range:age"]
    after = by_labels(client, "mlguard_requests_total", "route", "reason")
    assert after - before == Counter({("heuristic", "config.forced"): 1})


def test_config_reloads_are_counted_by_outcome_per_worker(
    client: httpx.Client, server: ServerProcess, edit_config: Callable[[str], None]
) -> None:
    def reloads(outcome: str) -> float:
        return total(client, "mlguard_config_reloads_total", outcome=outcome)

    success, failure = reloads("success"), reloads("failure")
    cfg = yaml.safe_load(server.config_path.read_text())
    cfg["decision"]["threshold"] = 0.55
    edit_config(yaml.safe_dump(cfg))
    # Each worker reloads its own snapshot: one success per worker.
    assert wait_until(lambda: reloads("success") == success + server.workers, timeout_s=15)
    assert reloads("failure") == failure

    cfg["routing"]["mode"] = "sideways"  # invalid: rejected, the previous config stays in force
    edit_config(yaml.safe_dump(cfg))
    assert wait_until(lambda: reloads("failure") == failure + server.workers, timeout_s=15)
    assert reloads("success") == success + server.workers
    assert total(client, "mlguard_routing_mode", mode="auto") == 1


def test_a_rejected_request_is_not_a_prediction(client: httpx.Client, server: ServerProcess) -> None:
    samples = (
        "mlguard_requests_total",
        "mlguard_decisions_total",
        "mlguard_request_duration_seconds_count",
        "mlguard_prediction_probability_count",
        "mlguard_model_duration_seconds_count",
        "mlguard_input_violations_total",
    )
    before = {s: total(client, s) for s in samples}
    limit = yaml.safe_load(server.config_path.read_text())["server"]["max_batch_size"]
    rejected = [
        client.post("/predict", json={**GOOD_ROW, "age": 500}),  # beyond the schema's bound
        client.post("/predict", json={**GOOD_ROW, "colour": "red"}),  # unknown field
        client.post("/predict_batch", json={"applications": []}),
        client.post("/predict_batch", json={"applications": [GOOD_ROW, {**GOOD_ROW, "time": 0}]}),
        client.post("/predict_batch", json={"applications": [GOOD_ROW] * (limit + 1)}),
    ]
    assert [r.status_code for r in rejected] == [400] * len(rejected)
    assert {s: total(client, s) for s in samples} == before


def test_counts_are_exact_with_two_workers_under_concurrent_mixed_load(
    client: httpx.Client, server: ServerProcess, edit_config: Callable[[str], None]
) -> None:
    assert server.workers == 2
    set_sample_ratio(server, edit_config, 1.0)  # every answer's log line names its worker (below)
    rows = credit_rows()[:400]
    singles = [rows[i] for i in range(40)] + [OUT_OF_RANGE] * 6 + [UNKNOWN_HOME] * 4
    batches = [rows[40 + 7 * i : 40 + 7 * i + 1 + (i * 5) % 23] for i in range(14)]
    batches[3] = batches[3] + [OUT_OF_RANGE, UNKNOWN_HOME]
    invalid = [{**GOOD_ROW, "age": -1}] * 8
    jobs: list[tuple[str, object]] = (
        [("/predict", r) for r in singles]
        + [("/predict_batch", {"applications": b}) for b in batches]
        + [("/predict", r) for r in invalid]
    )
    jobs = jobs[::2] + jobs[1::2]  # interleave kinds
    n = len(singles) + sum(len(b) for b in batches)

    start = total(client, "mlguard_requests_total")
    labels_before = by_labels(client, "mlguard_requests_total", "route", "reason")
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:  # scrapes while the load runs: never more than was sent, never backwards
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while True:  # at least once, and once more after the load: a fast load may end first
                last = done.is_set()
                seen.append(total(c, "mlguard_requests_total") - start)
                if last:
                    return

    # No keep-alive: each request is a new connection, so both workers take a share of the load.
    fresh = httpx.Client(
        base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )

    def send(job: tuple[str, object]) -> httpx.Response:
        return fresh.post(job[0], json=job[1])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with fresh, ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(send, jobs))
    finally:
        done.set()
        watcher.join(30)

    answers = []
    for (path, _), r in zip(jobs, responses):
        if r.status_code == 400:
            continue
        assert r.status_code == 200, r.text
        answers.extend(r.json()["predictions"] if path == "/predict_batch" else [r.json()])
    assert sum(r.status_code == 400 for r in responses) == len(invalid)
    assert len(answers) == n

    assert seen and all(0 <= v <= n for v in seen) and seen == sorted(seen)
    for _ in range(6):  # successive scrapes may be served by either worker: all agree
        assert total(client, "mlguard_requests_total") - start == n
    assert by_labels(client, "mlguard_requests_total", "route", "reason") - labels_before == Counter(
        expected_label(a) for a in answers
    )

    # Both workers answered, so the exact sum above really adds up two processes' counters.
    ids = {a["request_id"] for a in answers}
    pids = set()
    for line in server.log_text().splitlines():
        if line.startswith('{"event":"prediction"'):
            record = json.loads(line)
            if record["request_id"] in ids:
                pids.add(record["pid"])
    assert len(pids) == 2, pids


def test_promtool_check_metrics_reports_nothing_for_mlguard(client: httpx.Client) -> None:
    promtool = require_binary("promtool")
    for row in (GOOD_ROW, OUT_OF_RANGE, UNKNOWN_HOME):  # every metric has samples
        assert client.post("/predict", json=row).status_code == 200
    text = client.get("/metrics").text
    assert "mlguard_requests_total" in text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    report = checked.stdout + checked.stderr
    assert [line for line in report.splitlines() if "mlguard_" in line] == [], report
