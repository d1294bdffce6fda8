"""`make bench` / `make bench-quick`: the guard's cost against bare BentoML, side by side.

Starts a bare and a guarded server once; the guarded scenarios are hot-reloaded configurations of
the guarded one. Every repeat measures every scenario at each concurrency, in a rotating order,
each right beside a bare trial, and ratios against bare are taken within those pairs, so the load of
a shared machine hits both sides alike (docs/BENCHMARKS.md). Writes bench/results.json; with
--chart and --doc (`make bench`) also bench/results.png and the table in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx
from tqdm import tqdm

from bench import report
from bench.loadgen import Trial, encode_post, run_trial
from bench.servers import (
    PeakMemory,
    apply_config,
    config_text,
    configurations,
    cpu_seconds,
    drift_section_exists,
    start_servers,
    stop_all,
)
from tests.support.data import credit_rows
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TABLE_START, TABLE_END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
EXPECTED_ROUTE = {"guarded": "model", "batch": "model", "heuristic": "heuristic", "drift_on": "model",
                  "drift_off": "model", "micro_batching": "model"}
SIZES = {  # seconds measured per trial, warm-up per trial, repeats
    "quick": (1.2, 0.3, 3),
    "full": (5.0, 1.0, 5),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="full")
    p.add_argument("--workers", type=int, default=1, help="API workers of every server")
    p.add_argument("--concurrency", default="1,16", help="comma-separated connection counts")
    p.add_argument("--batch-rows", type=int, default=100, help="rows per /predict_batch request")
    p.add_argument("--out", type=Path, default=BENCH / "results.json")
    p.add_argument("--chart", type=Path, help="PNG to draw (the full run: bench/results.png)")
    p.add_argument("--doc", type=Path, help="markdown file whose table to replace")
    return p.parse_args(argv)


def rows_on_route(server: ServerProcess, route: str = "model", wanted: int = 2000) -> list[dict]:
    """Data-set rows the guard sends to the model, so 'model path' really is the model path.

    Drawn from the whole data set, shuffled: rows in file order, or a few hundred repeated, are
    a distribution shift the drift monitor rightly catches, and then routes to the rules.
    """
    rows = credit_rows()
    random.Random(7).shuffle(rows)
    picked: list[dict] = []
    for start in range(0, len(rows), 100):  # no larger than the batch scenario's: no new memory peak
        chunk = rows[start : start + 100]
        r = httpx.post(f"{server.url}/predict_batch", json={"applications": chunk}, timeout=120)
        r.raise_for_status()
        picked += [row for row, p in zip(chunk, r.json()["predictions"]) if p["route"] == route]
    return picked[:wanted]


def requests_for(port: int, rows: list[dict], batch_rows: int) -> dict[str, list[bytes]]:
    single = [encode_post(port, "/predict", json.dumps(row).encode()) for row in rows]
    batches = [
        encode_post(port, "/predict_batch", json.dumps({"applications": rows[i : i + batch_rows]}).encode())
        for i in range(0, len(rows) - batch_rows + 1, batch_rows // 2 or 1)
    ]
    return {"single": single, "batch": batches}


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bentoml": version("bentoml"),
        "scikit_learn": version("scikit-learn"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def plan_groups(configs: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """(guarded configuration, the scenarios measured under it)."""
    return [("guarded", ["guarded", "batch"])] + [(name, [name]) for name in configs if name != "guarded"]


class Runner:
    """Runs one measured trial: warm-up, then the window, with the server's CPU time around it."""

    def __init__(self, procs: dict[str, ServerProcess], rows: list[dict], args: argparse.Namespace):
        self.procs = procs
        self.seconds, self.warmup, _ = SIZES[args.size]
        self.batch_rows = args.batch_rows
        self.payloads = {name: requests_for(p.port, rows, args.batch_rows) for name, p in procs.items()}

    def __call__(self, name: str, concurrency: int) -> Trial:
        server = self.procs["bare" if name == "bare" else "guarded"]
        batch = name == "batch"
        requests = self.payloads["bare" if name == "bare" else "guarded"]["batch" if batch else "single"]
        if self.warmup > 0:
            run_trial(server.port, requests, concurrency, self.warmup)
        before = cpu_seconds(server.proc.pid)
        trial = run_trial(server.port, requests, concurrency, self.seconds,
                          rows_per_request=self.batch_rows if batch else 1)
        after = cpu_seconds(server.proc.pid)
        trial.server_cpu_seconds = {r: after[r] - before.get(r, 0.0) for r in after}
        return trial


def measure(args: argparse.Namespace) -> dict:
    """Every guarded scenario is measured right beside a bare trial (before it or after, in turn),
    and ratios against bare are taken within those pairs: on a shared machine, load comes and goes
    over seconds, and a pair sees the same load."""
    _, _, repeats = SIZES[args.size]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    configs = configurations(max(concurrencies))
    texts = {name: config_text(overrides) for name, overrides in configs.items()}
    groups = plan_groups(configs)
    names = ["bare"] + [n for _, group in groups for n in group]
    trials: dict[int, dict[str, list[Trial]]] = {c: {n: [] for n in names} for c in concurrencies}
    beside: dict[int, dict[str, list[Trial]]] = {c: {n: [] for n in names} for c in concurrencies}
    with tempfile.TemporaryDirectory(prefix="mlguard-bench-") as tmp:
        print(f"starting bare and guarded ({args.workers} worker(s) each) ...", file=sys.stderr)
        procs = start_servers(args.workers, max(concurrencies), Path(tmp))
        try:
            run = Runner(procs, rows_on_route(procs["guarded"]), args)
            n_trials = repeats * len(concurrencies) * sum(len(group) + 1 for _, group in groups)
            with PeakMemory(procs) as memory, tqdm(total=n_trials, desc=f"bench {args.size}", unit="trial") as bar:
                for r in range(repeats):
                    for k in range(len(groups)):
                        config, group = groups[(k + r) % len(groups)]  # rotate who goes first
                        apply_config(procs["guarded"], texts[config], args.workers)
                        for c in concurrencies:
                            order = ["bare", *group] if (r + k) % 2 == 0 else [*group, "bare"]
                            done = {name: run(name, c) for name in order}
                            for name, trial in done.items():
                                trials[c][name].append(trial)
                                beside[c][name].append(done["bare"])
                            bar.update(len(order))
        finally:
            stop_all(procs)
    return assemble(args, trials, beside, memory, concurrencies, len(run.payloads["guarded"]["single"]))


def assemble(args, trials, beside, memory: PeakMemory, concurrencies, n_rows) -> dict:
    summary = {c: {n: report.summarize(t) for n, t in trials[c].items()} for c in concurrencies}
    # The guarded scenario runs the shipped drift default: it stands in for that side of (d).
    default_side = "drift_on" if "drift_off" in trials[concurrencies[0]] else "drift_off"
    paired = {c: {**trials[c], default_side: trials[c]["guarded"]} for c in concurrencies}
    paired_beside = {c: {**beside[c], default_side: beside[c]["guarded"]} for c in concurrencies}
    by_conc = {c: report.ratios_at(paired[c], paired_beside[c], summary[c]) for c in concurrencies}
    ratios = report.headline_ratios(by_conc)
    peak_mb = {name: {r: b / 2**20 for r, b in roles.items()} for name, roles in memory.peak.items()}
    start_mb = {name: {r: b / 2**20 for r, b in roles.items()} for name, roles in memory.start.items()}
    delta = peak_mb["guarded"]["worker"] - peak_mb["bare"]["worker"]
    gen = [s for per_c in summary.values() for s in per_c.values()]
    seconds, warmup, repeats = SIZES[args.size]
    return {
        "size": args.size,
        "command": "make bench" if args.size == "full" else "make bench-quick",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "settings": {
            "workers": args.workers, "concurrency": concurrencies, "seconds_per_trial": seconds,
            "warmup_s_per_trial": warmup, "repeats": repeats, "batch_rows": args.batch_rows,
            "distinct_rows": n_rows, "guarded_configurations": configurations(max(concurrencies)),
            "drift_default_side": default_side if drift_section_exists() else None,
        },
        "scenarios": {str(c): summary[c] for c in concurrencies},
        "ratios": ratios,
        "ratios_by_concurrency": {str(c): r for c, r in by_conc.items()},
        "memory": {
            "peak_rss_mb": peak_mb,
            "guarded_minus_bare_worker_mb": delta,
            # Before any load: what the guard costs a worker by itself, without load-driven heap.
            "start_rss_mb": start_mb,
            "guarded_minus_bare_worker_mb_at_start": start_mb["guarded"]["worker"] - start_mb["bare"]["worker"],
        },
        "targets": report.check_targets(ratios, delta),
        # Share of each guarded scenario's rows answered on the route it is meant to measure.
        "route_purity": {
            str(c): {n: report.route_share(s, EXPECTED_ROUTE[n]) for n, s in summary[c].items()
                     if n in EXPECTED_ROUTE}
            for c in concurrencies
        },
        "generator": {
            "max_cpu_share": max(s["generator_cpu_share"] for s in gen),
            "max_cpu_us_per_request": max(s["generator_cpu_us_per_request"] for s in gen),
        },
    }


def write_doc(path: Path, results: dict) -> None:
    m = results["machine"]
    block = "\n".join([
        TABLE_START,
        (f"Measured {results['finished_at']} by `{results['command']}` on {m['cpus']} CPUs "
        f"({m['cpu']}), {m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}, "
        f"BentoML {m['bentoml']}, scikit-learn {m['scikit_learn']}; load average at start "
        f"{m['load_average_at_start']}. {results['settings']['workers']} worker(s) per server, "
        f"{results['settings']['repeats']} repeats of {results['settings']['seconds_per_trial']} s "
        "per scenario and concurrency."),
        "",
        report.markdown(results),
        "",
        "![benchmark chart](../bench/results.png)",
        TABLE_END,
    ])
    text = path.read_text() if path.exists() else ""
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = measure(args)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.chart:
        from bench.chart import draw  # matplotlib only when a chart is asked for

        draw(results, args.chart)
    if args.doc:
        write_doc(args.doc, results)
    print(report.markdown(results))
    impure = [f"{n} at {c}" for c, per in results["route_purity"].items() for n, share in per.items()
              if share < 0.99]
    if impure:
        print(f"\nWARNING: not on their route (see the routes column): {', '.join(impure)}", file=sys.stderr)
    missed = [k for k, c in results["targets"].items() if c["met"] is False]
    print(f"\ntargets missed: {', '.join(missed) or 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
