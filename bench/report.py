"""Turning trials into numbers: per-scenario summaries, ratios against bare, targets, the table."""
from __future__ import annotations

import statistics
from collections import Counter

from bench.loadgen import Trial

# (ratio key, target, higher is better); the issues' targets, as ratios from one run.
TARGETS = {
    "guarded_vs_bare_throughput": (0.95, True),
    "guarded_vs_bare_p99": (1.10, False),
    # The shipped configuration (micro-batching, drift, logging as shipped) on the same fast model.
    "fast_guarded_vs_bare_throughput": (0.90, True),
    "fast_guarded_vs_bare_p99": (1.15, False),
    "heuristic_vs_bare_throughput": (1.0, True),
    "drift_on_vs_off_throughput": (0.95, True),
    # The prediction log on (the shipped default) against off, on the shipped config.
    "store_on_vs_off_throughput": (0.95, True),
    "micro_batching_vs_bentoml_adaptive_throughput": (1.0, True),
    "micro_batching_vs_bentoml_adaptive_p99": (1.0, False),
}
MEMORY_TARGET_MB = 50.0  # guarded server above bare, per worker
MODEL_LATENCY_TARGET_MS = 1.0  # the reference model's one-row predict_proba, median, in-process


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(trials: list[Trial]) -> dict:
    seconds = sum(t.seconds for t in trials)
    requests = sum(t.requests for t in trials)
    rows = sum(t.rows for t in trials)
    # The time the trials' own rates imply (bench/loadgen.py), not their wall time.
    measured_s = sum(t.rows / t.rows_per_s for t in trials if t.rows_per_s) or float("nan")
    latencies = [x for t in trials for x in t.latencies]
    routes = sum((t.routes for t in trials), Counter())
    return {
        "requests_per_s": requests / measured_s,
        "rows_per_s": rows / measured_s,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "requests": requests,
        "errors": sum(t.errors for t in trials),
        "routes": dict(routes),
        "per_repeat_rows_per_s": [round(t.rows_per_s, 2) for t in trials],
        # Server CPU per answered request, by process role: far less sensitive to a busy machine
        # than throughput, so it is the steadiest measure of what the guard itself costs.
        "server_cpu_ms_per_request": {
            r: 1000 * sum(t.server_cpu_seconds.get(r, 0.0) for t in trials) / max(requests, 1)
            for r in sorted({r for t in trials for r in t.server_cpu_seconds})
        },
        # The generator's own CPU, as a share of one core: far below 1 means it was not the limit.
        "generator_cpu_share": sum(t.cpu_seconds for t in trials) / seconds,
        "generator_cpu_us_per_request": 1e6 * sum(t.cpu_seconds for t in trials) / max(requests, 1),
    }


def summarize_steps(steps: list[dict[str, Trial]]) -> dict[str, dict]:
    """Per scenario, over every step it ran in; bare first, then in order of appearance. Its
    rows/s against bare is paired (below), not one pooled rate over another."""
    names = list(dict.fromkeys(["bare", *(n for step in steps for n in step)]))
    return {
        n: {**summarize([step[n] for step in steps if n in step]),
            "rows_per_s_vs_bare": 1.0 if n == "bare" else paired_ratio(steps, "bare", n)}
        for n in names
    }


def route_share(summary: dict, route: str) -> float:
    rows = sum(summary["routes"].values())
    return summary["routes"].get(route, 0) / rows if rows else 0.0




def _beside(steps: list[dict[str, Trial]], a: str, b: str) -> list[tuple[Trial, Trial]]:
    """(a, b) from every step in which both ran."""
    return [(step[a], step[b]) for step in steps if a in step and b in step]


def paired_ratio(steps: list[dict[str, Trial]], a: str, b: str) -> float:
    """Median over steps of b's rows per second over a's. Most pairs agree within a few percent,
    but now and then the machine stalls one trial by 20% (seen at concurrency 16); a mean, even a
    geometric one, carries that into the ratio, the median does not."""
    return statistics.median(tb.rows_per_s / ta.rows_per_s for ta, tb in _beside(steps, a, b))


def pooled_percentile_ratio(steps: list[dict[str, Trial]], a: str, b: str, q: float) -> float:
    """A latency percentile of b's trials pooled over that of the a trials beside them (a
    percentile of one short trial is too noisy)."""
    pairs = _beside(steps, a, b)
    return (percentile([x for _, t in pairs for x in t.latencies], q)
            / percentile([x for t, _ in pairs for x in t.latencies], q))


def _cpu_ms(trials: list[Trial], roles: tuple[str, ...] = ("worker",)) -> float:
    by_role = summarize(trials)["server_cpu_ms_per_request"]
    return sum(by_role.get(r, 0.0) for r in roles) if "worker" in by_role else float("nan")


def ratios_at(steps: list[dict[str, Trial]], drift_on: str, drift_off: str) -> dict[str, float]:
    """Ratios at one concurrency, each within the steps where both sides ran; a pair that never
    ran side by side (a scenario not measured at this concurrency) is left out."""
    ran = {n for step in steps for n in step}
    out: dict[str, float] = {}

    def pair(prefix: str, a: str, b: str, p50: bool = False) -> None:
        if not _beside(steps, a, b):
            return
        out[f"{prefix}_throughput"] = paired_ratio(steps, a, b)
        out[f"{prefix}_p99"] = pooled_percentile_ratio(steps, a, b, 0.99)
        if p50:
            out[f"{prefix}_p50"] = pooled_percentile_ratio(steps, a, b, 0.50)

    pair("guarded_vs_bare", "bare", "guarded", p50=True)
    pair("fast_guarded_vs_bare", "bare", "default", p50=True)
    pair("micro_batching_vs_bare", "bare", "micro_batching")
    pair("micro_batching_vs_bentoml_adaptive", "adaptive", "micro_batching")
    if "heuristic" in ran:
        out["heuristic_vs_bare_throughput"] = paired_ratio(steps, "bare", "heuristic")
    if {"batch", "guarded"} <= ran:
        # Each against its own bare: batch and single requests to one server cannot share a step.
        out["batch_vs_single_rows_per_s"] = (paired_ratio(steps, "bare", "batch")
                                             / paired_ratio(steps, "bare", "guarded"))
    if _beside(steps, drift_off, drift_on):
        out["drift_on_vs_off_throughput"] = paired_ratio(steps, drift_off, drift_on)
    if _beside(steps, "store_off", "default"):
        out["store_on_vs_off_throughput"] = paired_ratio(steps, "store_off", "default")
    if pairs := _beside(steps, "bare", "guarded"):
        out["guarded_vs_bare_worker_cpu_per_request"] = (_cpu_ms([g for _, g in pairs])
                                                         / _cpu_ms([b for b, _ in pairs]))
    if pairs := _beside(steps, "bare", "default"):
        # What the guard adds to a request, in server CPU: the worker's and the drift process's
        # (the shadow rules, the checks) above bare's worker, from the same steps.
        bare_us = 1000 * _cpu_ms([b for b, _ in pairs])
        out["guard_cpu_us_per_request"] = 1000 * _cpu_ms([d for _, d in pairs], ("worker", "drift")) - bare_us
        out["guard_worker_cpu_us_per_request"] = 1000 * _cpu_ms([d for _, d in pairs]) - bare_us
    return out


def headline_ratios(by_conc: dict[int, dict[str, float]]) -> dict[str, float]:
    """The worst value over the concurrencies measured; micro-batching's gain over bare is judged
    at the highest one (at concurrency 1 there is nothing to batch)."""
    highest = max(by_conc)
    keys = {k for r in by_conc.values() for k in r}
    out: dict[str, float] = {}
    for key in sorted(keys):
        values = [r[key] for r in by_conc.values() if key in r]
        if key == "micro_batching_vs_bare_throughput" and key in by_conc[highest]:
            out[key] = by_conc[highest][key]
        elif key.endswith(("_p99", "_p50", "_us_per_request")):  # higher is worse
            out[key] = max(values)
        else:
            out[key] = min(values)
    return out


def check_targets(ratios: dict[str, float], worker_delta_mb: float,
                  model_ms: float | None = None) -> dict[str, dict]:
    """Each target met or not; `met` is None for one this run did not measure."""
    checks = {}

    def check(key: str, value: float | None, target: float, higher: bool) -> None:
        met = None if value is None else (value >= target if higher else value <= target)
        checks[key] = {"target": f"{'>=' if higher else '<='} {target}", "value": value, "met": met}

    for key, (target, higher) in TARGETS.items():
        check(key, ratios.get(key), target, higher)
    check("guarded_minus_bare_worker_rss_mb", worker_delta_mb, MEMORY_TARGET_MB, False)
    check("reference_model_one_row_ms", model_ms, MODEL_LATENCY_TARGET_MS, False)
    return checks


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cpu(by_role: dict[str, float]) -> str:
    worker = _fmt(by_role.get("worker"))
    return f"{worker} + {_fmt(by_role['drift'])}" if "drift" in by_role else worker


def markdown(results: dict) -> str:
    lines = [
        (
            "| scenario | concurrency | requests/s | rows/s | p50 ms | p99 ms | rows/s vs bare (paired) "
            "| server CPU ms/request (worker + drift) | routes | errors |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for conc, scenarios in results["scenarios"].items():
        for name, s in scenarios.items():
            routes = ", ".join(f"{k} {v}" for k, v in sorted(s["routes"].items())) or "-"
            lines.append(
                f"| {name} | {conc} | {_fmt(s['requests_per_s'], 1)} | {_fmt(s['rows_per_s'], 1)} | "
                f"{_fmt(s['p50_ms'])} | {_fmt(s['p99_ms'])} | {_fmt(s['rows_per_s_vs_bare'])} | "
                f"{_cpu(s['server_cpu_ms_per_request'])} | {routes} | {s['errors']} |"
            )
    lines += ["", "| ratio (worst over concurrencies) | value | target | met |", "|---|---:|---|---|"]
    for key, check in results["targets"].items():
        met = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
        lines.append(f"| {key} | {_fmt(check['value'])} | {check['target']} | {met} |")
    for key, value in results["ratios"].items():
        if key not in results["targets"]:
            lines.append(f"| {key} | {_fmt(value)} | - | - |")
    roles = ("worker", "arbiter", "drift", "total")
    lines += ["", "| server | RSS, MB: " + " | ".join(roles) + " |", "|---|" + "---:|" * len(roles)]
    for when in ("start", "peak"):
        for name, rss in results["memory"][f"{when}_rss_mb"].items():
            cells = " | ".join(_fmt(rss[r], 1) if r in rss else "-" for r in roles)
            lines.append(f"| {name}, {'before load' if when == 'start' else 'peak'} | {cells} |")
    gen, model = results["generator"], results["reference_model"]
    lines += [
        "",
        (
            f"Reference model {model['tag']} ({model['model']}): one-row predict_proba "
            f"{_fmt(model['one_row_predict_proba_ms_median'], 3)} ms median, "
            f"{_fmt(model['one_row_predict_proba_ms_p99'], 3)} ms p99 over {model['calls']:,} calls "
            "in-process."
        ),
        "",
        (
            f"Load generator: at most {_fmt(gen['max_cpu_share'])} of one core "
            f"({_fmt(gen['max_cpu_us_per_request'], 0)} us of CPU per request at most)."
        ),
    ]
    return "\n".join(lines)
