"""The benchmark's own machinery (bench/): the load generator against a real server, and the
arithmetic that turns trials into the ratios the targets are judged on."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from bench.loadgen import (
    RequestCycle,
    Target,
    Trial,
    encode_post,
    merge,
    run_alternating,
    run_trial,
)
from bench.report import (
    check_targets,
    headline_ratios,
    paired_ratio,
    pooled_percentile_ratio,
    ratios_at,
)
from bench.run import Group, plan_groups, reference_model_latency, requests_for, step_order
from bench.servers import ADAPTIVE_TARGET, BARE_TARGET, configurations, shipped_servers
from tests.support.data import GOOD_ROW
from tests.support.server import ServerProcess


def _cycle(port: int, n: int) -> RequestCycle:
    rows = [{**GOOD_ROW, "amount": 500 + i} for i in range(n)]
    return RequestCycle([encode_post(port, "/predict", json.dumps(r).encode()) for r in rows])


def test_request_cycle_continues_from_one_trial_to_the_next() -> None:
    # Restarting at the first request every trial replays the same few rows: a drift the monitor
    # catches, which then routes the "model path" to the rules.
    cycle = RequestCycle([b"a", b"b", b"c"])
    assert [cycle.take() for _ in range(2)] == [b"a", b"b"]
    assert [cycle.take() for _ in range(3)] == [b"c", b"a", b"b"]


def test_a_trial_answers_and_counts_every_request(server: ServerProcess) -> None:
    target = Target(server.port, _cycle(server.port, 50))
    trial = run_trial(target, concurrency=4, seconds=0.5)
    assert trial.errors == 0
    assert trial.requests > 0 and trial.rows == trial.requests == len(trial.latencies)
    assert sum(trial.routes.values()) == trial.requests
    assert trial.seconds >= 0.5
    # Each connection's rows over the time to its own last answer, summed: never less than the
    # rows over the whole trial's wall time, which waits for the slowest connection.
    assert trial.rows_per_s >= trial.rows / trial.seconds
    assert trial.rows_per_s <= trial.rows / 0.5 * 1.01  # no connection stopped before 0.5 s


def test_alternating_sides_take_turns_and_own_their_time(server: ServerProcess) -> None:
    a = Target(server.port, _cycle(server.port, 20))
    b = Target(server.port, _cycle(server.port, 20))
    started = time.perf_counter()
    ta, tb = run_alternating([a, b], seconds=0.6)
    wall = time.perf_counter() - started
    assert ta.errors == tb.errors == 0
    assert abs(ta.requests - tb.requests) <= 1  # strictly in turn
    # A side's seconds are its own requests' time: the sum of its latencies, not the wall time.
    assert ta.seconds == pytest.approx(sum(ta.latencies))
    assert tb.seconds == pytest.approx(sum(tb.latencies))
    # It ran for the time asked, and the sides' own times fit inside it (the generator's work
    # between requests belongs to neither side).
    assert wall >= 0.6
    assert 0 < ta.seconds + tb.seconds <= wall
    assert ta.rows_per_s == pytest.approx(ta.rows / ta.seconds)


def _trial(rate: float, latencies: list[float] | None = None, cpu: dict[str, float] | None = None) -> Trial:
    return Trial(requests=int(rate), rows=int(rate), seconds=1.0, rows_per_s=rate,
                 latencies=latencies or [], server_cpu_seconds=cpu or {"worker": 0.01 * rate})


def test_a_sides_slices_make_one_trial() -> None:
    """Above concurrency 1 the sides take turns slice by slice (bench/run.py): equal slices, so the
    throughput is their mean; counts, times, latencies, routes and server CPU add up."""
    first = Trial(requests=300, rows=300, errors=1, seconds=1.0, rows_per_s=300.0, cpu_seconds=0.1,
                  latencies=[0.01] * 300, server_cpu_seconds={"worker": 0.5, "drift": 0.02})
    first.routes["model"] = 300
    second = Trial(requests=500, rows=500, seconds=1.0, rows_per_s=500.0, cpu_seconds=0.2,
                   latencies=[0.02] * 500, server_cpu_seconds={"worker": 0.7})
    second.routes.update({"model": 499, "heuristic": 1})
    whole = merge([first, second])
    assert (whole.requests, whole.rows, whole.errors, whole.rows_per_s) == (800, 800, 1, 400.0)
    assert whole.seconds == 2.0 and whole.cpu_seconds == pytest.approx(0.3)
    assert len(whole.latencies) == 800 and whole.routes == {"model": 799, "heuristic": 1}
    assert whole.server_cpu_seconds == pytest.approx({"worker": 1.2, "drift": 0.02})


def test_ratios_are_taken_within_steps() -> None:
    # The machine is twice as fast in the second step; within each step guarded runs at 0.9 of bare.
    steps = [
        {"bare": _trial(100), "guarded": _trial(90), "drift_off": _trial(90)},
        {"bare": _trial(200), "guarded": _trial(180), "drift_off": _trial(200)},
        {"bare": _trial(100), "heuristic": _trial(500)},
    ]
    assert paired_ratio(steps, "bare", "guarded") == pytest.approx(0.9)
    assert paired_ratio(steps, "bare", "heuristic") == pytest.approx(5.0)  # only where both ran
    assert paired_ratio(steps, "drift_off", "guarded") == pytest.approx(0.95)  # median of 1.0, 0.9


def test_one_stalled_trial_does_not_move_a_ratio() -> None:
    steps = [{"bare": _trial(100), "guarded": _trial(100)} for _ in range(4)]
    steps.append({"bare": _trial(100), "guarded": _trial(80)})  # the machine stalled this trial
    assert paired_ratio(steps, "bare", "guarded") == pytest.approx(1.0)


def test_percentiles_are_pooled_against_the_bare_trials_beside_them() -> None:
    steps = [
        {"bare": _trial(100, [0.010] * 99 + [0.020]), "guarded": _trial(100, [0.010] * 99 + [0.030])},
        {"bare": _trial(100, [9.0] * 100)},  # no guarded beside it: not part of the comparison
    ]
    assert pooled_percentile_ratio(steps, "bare", "guarded", 0.99) == pytest.approx(1.5)


def test_targets_are_judged_on_the_worst_side() -> None:
    steps = [{
        "bare": _trial(100, [0.01] * 100), "guarded": _trial(94, [0.01] * 100),
        "drift_off": _trial(94), "heuristic": _trial(900), "micro_batching": _trial(300),
        "batch": _trial(5000),
    }]
    ratios = ratios_at(steps, drift_on="guarded", drift_off="drift_off")
    assert ratios["batch_vs_single_rows_per_s"] == pytest.approx(5000 / 94)
    checks = check_targets(ratios, worker_delta_mb=51.0, model_ms=0.02)
    assert checks["guarded_vs_bare_throughput"]["met"] is False  # 0.94 < 0.95
    assert checks["drift_on_vs_off_throughput"]["met"] is True
    assert checks["guarded_vs_bare_p99"]["met"] is True
    assert checks["guarded_minus_bare_worker_rss_mb"]["met"] is False
    assert checks["reference_model_one_row_ms"]["met"] is True
    # Pairs that never ran side by side are not measured, not failed.
    assert "fast_guarded_vs_bare_throughput" not in ratios
    assert checks["fast_guarded_vs_bare_throughput"] == {"target": ">= 0.9", "value": None, "met": None}
    assert checks["micro_batching_vs_bentoml_adaptive_throughput"]["met"] is None


def test_the_fast_pair_and_the_adaptive_peer_are_judged_within_their_steps() -> None:
    ms = [0.001] * 100
    steps = [
        {"bare": _trial(1000, ms, {"worker": 0.30}),  # 300 us of worker CPU per request
         "default": _trial(920, [0.0011] * 100, {"worker": 0.322, "drift": 0.046})},
        {"bare": _trial(1000, ms), "micro_batching": _trial(800, ms), "adaptive": _trial(1000, [0.002] * 100)},
    ]
    ratios = ratios_at(steps, drift_on="guarded", drift_off="drift_off")
    assert ratios["fast_guarded_vs_bare_throughput"] == pytest.approx(0.92)
    assert ratios["fast_guarded_vs_bare_p99"] == pytest.approx(1.1)
    # 322 + 46 us for each of 920 requests, against 300 us for each of bare's 1000.
    assert ratios["guard_cpu_us_per_request"] == pytest.approx(1e6 * 0.368 / 920 - 300)
    assert ratios["guard_worker_cpu_us_per_request"] == pytest.approx(1e6 * 0.322 / 920 - 300)
    assert ratios["micro_batching_vs_bentoml_adaptive_throughput"] == pytest.approx(0.8)
    assert ratios["micro_batching_vs_bentoml_adaptive_p99"] == pytest.approx(0.5)
    assert "guarded_vs_bare_throughput" not in ratios  # guarded never ran
    checks = check_targets(ratios, worker_delta_mb=0.0)
    assert checks["fast_guarded_vs_bare_throughput"]["met"] is True
    assert checks["micro_batching_vs_bentoml_adaptive_throughput"]["met"] is False
    assert checks["micro_batching_vs_bentoml_adaptive_p99"]["met"] is True
    assert checks["reference_model_one_row_ms"]["met"] is None


def test_headline_takes_the_worse_concurrency_and_what_only_one_measured() -> None:
    by_conc = {
        1: {"fast_guarded_vs_bare_throughput": 0.97, "fast_guarded_vs_bare_p99": 1.02,
            "guard_cpu_us_per_request": 40.0, "micro_batching_vs_bare_throughput": 1.0},
        16: {"fast_guarded_vs_bare_throughput": 0.93, "fast_guarded_vs_bare_p99": 0.98,
             "guard_cpu_us_per_request": 55.0, "micro_batching_vs_bare_throughput": 3.0,
             "micro_batching_vs_bentoml_adaptive_throughput": 1.04},
    }
    assert headline_ratios(by_conc) == {
        "fast_guarded_vs_bare_throughput": 0.93,
        "fast_guarded_vs_bare_p99": 1.02,
        "guard_cpu_us_per_request": 55.0,  # CPU: more is worse
        "micro_batching_vs_bare_throughput": 3.0,  # judged where there is something to batch
        "micro_batching_vs_bentoml_adaptive_throughput": 1.04,
    }


def test_batching_peers_are_measured_at_the_highest_concurrency_only() -> None:
    group = Group("micro_batching", ["micro_batching", "adaptive"], tight=True)
    assert step_order(group, 1, bare_first=True) == ["bare", "micro_batching"]
    assert step_order(group, 16, bare_first=False) == ["micro_batching", "adaptive", "bare"]


def test_the_store_pair_runs_on_two_fresh_servers_that_differ_only_in_the_store() -> None:
    """Not on the guarded server, whose prediction log holds every other scenario's rows."""
    shipped = shipped_servers(16)
    assert shipped["store_off"] == {**shipped["default"], "store": {"enabled": False}}
    assert not shipped.keys() & configurations(16).keys()  # not hot-reloaded on the guarded server
    (pair,) = [g for g in plan_groups("drift_off") if "store_off" in g.scenarios]
    assert pair.scenarios == ["default", "store_off"] and pair.config is None


def test_the_adaptive_peer_is_sent_one_row_lists() -> None:
    rows = [{**GOOD_ROW, "amount": 500 + i} for i in range(3)]
    plain = requests_for(8000, rows, batch_rows=2)["single"].take()
    listed = requests_for(8000, rows, batch_rows=2, one_row_lists=True)["single"].take()
    assert json.loads(plain.split(b"\r\n\r\n", 1)[1]) == rows[0]
    assert json.loads(listed.split(b"\r\n\r\n", 1)[1]) == [rows[0]]


def test_reference_model_latency_is_taken_over_the_calls_asked() -> None:
    from apps.credit.app import CREDIT_APP

    measured = reference_model_latency(calls=30)
    assert measured["calls"] == 30 and measured["tag"].startswith(f"{CREDIT_APP.model_name}:")
    assert 0 < measured["one_row_predict_proba_ms_median"] <= measured["one_row_predict_proba_ms_p99"]


def test_the_bare_baseline_serves_the_guarded_model(tmp_path) -> None:
    """The baseline answers the probability the guard's model path computes, on the same version."""
    from apps.credit.app import CREDIT_APP
    from monitors.tasks import OutputPolicy
    from service.scoring.model import load_model

    raw = load_model(CREDIT_APP, f"{CREDIT_APP.model_name}:latest").model.predict_rows([GOOD_ROW])
    (expected,) = CREDIT_APP.task.from_model(raw, OutputPolicy())
    bare = ServerProcess(target=BARE_TARGET, workdir=tmp_path).start()
    try:
        r = httpx.post(f"{bare.url}/predict", json=GOOD_ROW, timeout=30)
        rejected = httpx.post(f"{bare.url}/predict", json={**GOOD_ROW, "age": "old"}, timeout=30)
    finally:
        bare.stop()
    assert r.status_code == 200, r.text
    assert r.json() == {"probability": pytest.approx(expected.score, abs=1e-12)}
    assert rejected.status_code == 400  # the same schema


def test_the_adaptive_batching_peer_answers_each_row_of_its_list(tmp_path) -> None:
    """BentoML's batchable API: a list of rows in, the bare probability of each out, in order."""
    other = {**GOOD_ROW, "income": None, "job": "partime"}
    peer = ServerProcess(target=ADAPTIVE_TARGET, workdir=tmp_path / "adaptive").start()
    bare = ServerProcess(target=BARE_TARGET, workdir=tmp_path / "bare").start()
    try:
        listed = httpx.post(f"{peer.url}/predict", json=[GOOD_ROW, other], timeout=30)
        one = [httpx.post(f"{bare.url}/predict", json=row, timeout=30).json() for row in (GOOD_ROW, other)]
        rejected = httpx.post(f"{peer.url}/predict", json=[{**GOOD_ROW, "age": "old"}], timeout=30)
    finally:
        peer.stop()
        bare.stop()
    assert listed.status_code == 200, listed.text
    assert listed.json() == one and one[0] != one[1]
    assert rejected.status_code == 400
