"""Turning trials into numbers: per-scenario summaries, ratios against bare, targets, the table."""
from __future__ import annotations

import statistics
from collections import Counter

from bench.loadgen import Trial

# (ratio key, target, higher is better); the targets, as ratios from one run.
TARGETS = {
    "guarded_vs_bare_throughput": (0.95, True),
    "guarded_vs_bare_p99": (1.10, False),
    "heuristic_vs_bare_throughput": (1.0, True),
    "drift_on_vs_off_throughput": (0.95, True),
    "micro_batching_vs_bare_throughput": (2.0, True),
}
MEMORY_TARGET_MB = 50.0  # guarded server above bare, per worker


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


def _worker_cpu_ms(trials: list[Trial]) -> float:
    return summarize(trials)["server_cpu_ms_per_request"].get("worker", float("nan"))


def ratios_at(steps: list[dict[str, Trial]], drift_on: str, drift_off: str) -> dict[str, float]:
    """Ratios at one concurrency, each within the steps where both sides ran."""
    pairs = _beside(steps, "bare", "guarded")
    return {
        "guarded_vs_bare_throughput": paired_ratio(steps, "bare", "guarded"),
        "guarded_vs_bare_p99": pooled_percentile_ratio(steps, "bare", "guarded", 0.99),
        "guarded_vs_bare_p50": pooled_percentile_ratio(steps, "bare", "guarded", 0.50),
        "heuristic_vs_bare_throughput": paired_ratio(steps, "bare", "heuristic"),
        # Each against its own bare: batch and single requests to one server cannot share a step.
        "batch_vs_single_rows_per_s": paired_ratio(steps, "bare", "batch")
        / paired_ratio(steps, "bare", "guarded"),
        "micro_batching_vs_bare_throughput": paired_ratio(steps, "bare", "micro_batching"),
        "micro_batching_vs_bare_p99": pooled_percentile_ratio(steps, "bare", "micro_batching", 0.99),
        "drift_on_vs_off_throughput": paired_ratio(steps, drift_off, drift_on),
        "guarded_vs_bare_worker_cpu_per_request": _worker_cpu_ms([g for _, g in pairs])
        / _worker_cpu_ms([b for b, _ in pairs]),
    }


def headline_ratios(by_conc: dict[int, dict[str, float]]) -> dict[str, float]:
    """The worst value over the concurrencies measured; micro-batching's is at the highest one."""
    highest = max(by_conc)
    keys = {k for r in by_conc.values() for k in r}
    out: dict[str, float] = {}
    for key in sorted(keys):
        values = [r[key] for r in by_conc.values() if key in r]
        if key.startswith("micro_batching_vs_bare_throughput"):
            out[key] = by_conc[highest][key]
        elif key.endswith(("_p99", "_p50")):
            out[key] = max(values)
        else:
            out[key] = min(values)
    return out


def check_targets(ratios: dict[str, float], worker_delta_mb: float) -> dict[str, dict]:
    checks = {}
    for key, (target, higher) in TARGETS.items():
        value = ratios[key]
        met = value >= target if higher else value <= target
        checks[key] = {"target": f"{'>=' if higher else '<='} {target}", "value": value, "met": met}
    checks["guarded_minus_bare_worker_rss_mb"] = {
        "target": f"<= {MEMORY_TARGET_MB}",
        "value": worker_delta_mb,
        "met": worker_delta_mb <= MEMORY_TARGET_MB,
    }
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
        met = "yes" if check["met"] else "**no**"
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
    gen = results["generator"]
    lines += [
        "",
        (
            f"Load generator: at most {_fmt(gen['max_cpu_share'])} of one core "
            f"({_fmt(gen['max_cpu_us_per_request'], 0)} us of CPU per request at most)."
        ),
    ]
    return "\n".join(lines)
