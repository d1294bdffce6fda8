"""`make bench` / `make bench-quick`: the guard's cost against bare BentoML, side by side.

Starts a bare, an adaptive-batching and a guarded server once (and the drift pair's twin, and the
shipped config with and without the store); the other guarded scenarios are hot-reloaded
configurations of the guarded one. Every repeat measures every
scenario at each concurrency, in a rotating order, each right beside a bare trial, and ratios
against bare are taken within those pairs, so the load of a shared machine hits both sides alike
(docs/BENCHMARKS.md). Writes bench/results.json; with --chart and --doc (`make bench`) also
bench/results.png and the table in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
from tqdm import tqdm

from bench import report
from bench.loadgen import (
    RequestCycle,
    Target,
    Trial,
    encode_post,
    merge,
    run_alternating,
    run_trial,
)
from bench.servers import (
    PeakMemory,
    apply_config,
    config_text,
    configurations,
    cpu_seconds,
    drift_server,
    drift_sides,
    shipped_servers,
    start_servers,
    stop_all,
)
from tests.support.data import credit_rows
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TABLE_START, TABLE_END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
EXPECTED_ROUTE = {"guarded": "model", "default": "model", "batch": "model", "heuristic": "heuristic",
                  "drift_on": "model", "drift_off": "model", "micro_batching": "model",
                  "store_off": "model"}
# Measured at the highest concurrency only: batching peers, which at concurrency 1 have nothing to
# batch and would only add time.
HIGHEST_ONLY = {"adaptive"}
LATENCY_CALLS = 1000  # one-row predict_proba calls timed in-process


@dataclass(frozen=True)
class Size:
    """How long a run measures. Many short pairs rather than a few long ones: this machine's speed
    wanders over seconds, and only a bare trial run right beside its scenario sees the same machine
    (docs/BENCHMARKS.md, "Interleaved and paired").

    Time goes where the targets are tight. Guarded and drift on/off must come within 5-10 % of
    their partner, and a p99 is only as steady as the hundreds of answers behind it; heuristic,
    micro-batching and batch are several times away from their targets, so their trials (and the
    bare trials beside them) get `other_share` of the time.
    """

    seconds: float  # per trial and side at concurrency 1, after a short warm-up
    # At higher concurrency: long enough for several requests a connection. No warm-up: the server
    # is loaded from the first request, and waiting for a warm-up's last answers costs a latency.
    seconds_concurrent: float
    other_share: float
    repeats: int


WARMUP_S = 0.15  # concurrency 1: a few requests to each side before measuring
# Above concurrency 1 a step's sides take turns for this long each until each had its time: this
# machine's speed wanders over seconds, and whole trials one after the other met different machines
# (docs/BENCHMARKS.md, round 8).
SLICE_S = 1.0

# The reference model answers ~400 requests/s here (it was ~60 with the former 400-tree model), so
# these trials hold as many answers as the former, longer ones did; five groups (two of them with
# three servers) instead of three fit in about the same time.
SIZES = {
    "quick": Size(seconds=2.0, seconds_concurrent=3.0, other_share=0.15, repeats=4),
    "full": Size(seconds=4.0, seconds_concurrent=6.0, other_share=0.15, repeats=8),
}


@dataclass(frozen=True)
class Group:
    """Scenarios measured in one step, beside bare, under one configuration of the guarded server."""

    config: str | None  # the guarded server's configuration, None when the step does not use it
    scenarios: list[str]
    tight: bool  # its ratios have targets close to 1 (see Size)


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


def requests_for(port: int, rows: list[dict], batch_rows: int, one_row_lists: bool = False
                 ) -> dict[str, RequestCycle]:
    """`one_row_lists`: single requests as a list of one row (BentoML's batchable API)."""
    single = [encode_post(port, "/predict", json.dumps([row] if one_row_lists else row).encode())
              for row in rows]
    batches = [
        encode_post(port, "/predict_batch", json.dumps({"applications": rows[i : i + batch_rows]}).encode())
        for i in range(0, len(rows) - batch_rows + 1, batch_rows // 2 or 1)
    ]
    return {"single": RequestCycle(single), "batch": RequestCycle(batches)}


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


def plan_groups(drift_name: str) -> list[Group]:
    """The drift server runs the guarded configuration with drift switched, so it is measured beside
    the guarded scenario; BentoML's adaptive batching beside mlguard's micro-batching. No two of one
    step share a server except bare's: each server's CPU time is its scenario's."""
    return [
        Group("guarded", ["guarded", drift_name], tight=True),
        Group(None, ["default", "store_off"], tight=True),
        Group("micro_batching", ["micro_batching", "adaptive"], tight=True),
        Group("guarded", ["batch"], tight=False),
        Group("heuristic", ["heuristic"], tight=False),
    ]


def step_order(group: Group, concurrency: int, bare_first: bool) -> list[str]:
    """The servers of one step: the group's scenarios (those measured at this concurrency) and bare."""
    scenarios = [n for n in group.scenarios if concurrency > 1 or n not in HIGHEST_ONLY]
    return ["bare", *scenarios] if bare_first else [*scenarios, "bare"]


def reference_model_latency(calls: int = LATENCY_CALLS) -> dict:
    """The served model's one-row predict_proba in this process, as the bare service calls it
    (the plug-in's feature matrix of one request row): median and p99 over `calls` distinct rows."""
    import bentoml
    from threadpoolctl import threadpool_limits

    from apps.credit.app import CREDIT_APP

    stored = bentoml.models.get(f"{CREDIT_APP.model_name}:latest")
    model, matrix = stored.load_model(), CREDIT_APP.features.matrix
    rows = [matrix([row]) for row in credit_rows()[:calls]]  # rows as clients send them
    took = []
    with threadpool_limits(1):
        for x in rows[:50]:  # warm-up
            model.predict_proba(x)
        for i in range(calls):
            x = rows[i % len(rows)]
            started = time.perf_counter()
            model.predict_proba(x)
            took.append(time.perf_counter() - started)
    return {
        "tag": str(stored.tag),
        "model": type(model).__name__,
        "calls": calls,
        "one_row_predict_proba_ms_median": statistics.median(took) * 1000,
        "one_row_predict_proba_ms_p99": report.percentile(took, 0.99) * 1000,
    }


class Runner:
    """Runs measured trials, with the servers' CPU time around them."""

    def __init__(self, procs: dict[str, ServerProcess], rows: list[dict], args: argparse.Namespace):
        self.procs = procs
        self.size = SIZES[args.size]
        self.payloads = {name: requests_for(p.port, rows, args.batch_rows, one_row_lists=name == "adaptive")
                         for name, p in procs.items()}
        self.batch_rows = args.batch_rows

    def _server_name(self, name: str) -> str:
        """bare, adaptive, the drift server, default and store_off are servers of their own; the
        rest are the guarded server's."""
        return name if name in self.procs else "guarded"

    def _server(self, name: str) -> ServerProcess:
        return self.procs[self._server_name(name)]

    def _target(self, name: str) -> Target:
        batch = name == "batch"
        requests = self.payloads[self._server_name(name)]["batch" if batch else "single"]
        return Target(self._server(name).port, requests, self.batch_rows if batch else 1)

    def warm_up(self, concurrencies: list[int], seconds: float = 1.0) -> None:
        """Every server at every concurrency once before measuring: the first load at 16 starts
        the guard's model threads (lazily) and grows the heap; it
        made the first trial's p99 ~40 % above the rest."""
        for name in self.procs:
            for c in concurrencies:
                if c > 1 or name not in HIGHEST_ONLY:
                    run_trial(self._target(name), c, seconds)

    def _share(self, tight: bool) -> float:
        return 1.0 if tight else self.size.other_share

    def alone(self, name: str, concurrency: int, seconds: float) -> Trial:
        """One server, `concurrency` connections (more than one)."""
        server, target = self._server(name), self._target(name)
        before = cpu_seconds(server.proc.pid)
        trial = run_trial(target, concurrency, seconds)
        trial.server_cpu_seconds = _minus(cpu_seconds(server.proc.pid), before)
        return trial

    def interleaved(self, names: list[str], concurrency: int, tight: bool) -> list[Trial]:
        """Above concurrency 1, where one side cannot wait while another works: the sides in
        turn, `SLICE_S` at a time, until each has had its time; each side's slices make its trial."""
        seconds = self.size.seconds_concurrent * self._share(tight)
        slices = max(1, round(seconds / SLICE_S))
        parts: dict[str, list[Trial]] = {n: [] for n in names}
        for _ in range(slices):
            for name in names:
                parts[name].append(self.alone(name, concurrency, seconds / slices))
        return [merge(parts[n]) for n in names]

    def alternating(self, names: list[str], tight: bool) -> list[Trial]:
        """Concurrency 1, request by request in turn (bench/loadgen.py), each side for about as long
        as it would run alone; each server's CPU is its own."""
        servers, targets = [self._server(n) for n in names], [self._target(n) for n in names]
        run_alternating(targets, WARMUP_S * len(targets))
        before = [cpu_seconds(s.proc.pid) for s in servers]
        trials = run_alternating(targets, self.size.seconds * self._share(tight) * len(targets))
        for trial, server, b in zip(trials, servers, before):
            trial.server_cpu_seconds = _minus(cpu_seconds(server.proc.pid), b)
        return trials


def _minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {r: after[r] - before.get(r, 0.0) for r in after}


def measure(args: argparse.Namespace) -> dict:
    """Every scenario is measured right beside a bare trial, in steps: the trials of one step ran
    side by side, and ratios are taken within steps. On a shared machine, speed comes and goes over
    seconds, and one step sees one machine. At concurrency 1 a step's servers are loaded at once,
    request by request in turn; at higher concurrency one side cannot wait while another works, so
    the sides take turns a second at a time, bare first or last in turn."""
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    configs = configurations(max(concurrencies))
    texts = {name: config_text(overrides) for name, overrides in configs.items()}
    drift_name, _ = drift_server(max(concurrencies))
    groups = plan_groups(drift_name)
    latency = reference_model_latency()  # before any server runs: the machine is the quietest
    with tempfile.TemporaryDirectory(prefix="mlguard-bench-") as tmp:
        print(f"starting bare, adaptive, guarded, {drift_name}, default and store_off "
              f"({args.workers} worker(s) each) ...",
              file=sys.stderr)
        procs = start_servers(args.workers, max(concurrencies), Path(tmp))
        try:
            with PeakMemory(procs) as memory:  # "before load" is sampled here, before any request
                run = Runner(procs, rows_on_route(procs["guarded"]), args)
                run.warm_up(concurrencies)
                steps = run_steps(run, groups, texts, concurrencies, args)
        finally:
            stop_all(procs)
    return assemble(args, steps, memory, len(run.payloads["guarded"]["single"]), latency)


def run_steps(run: Runner, groups: list[Group], texts: dict[str, str], concurrencies: list[int],
              args: argparse.Namespace) -> dict[int, list[dict[str, Trial]]]:
    """Per repeat, every group in rotating order, bare first or last in turn."""
    repeats = SIZES[args.size].repeats
    steps: dict[int, list[dict[str, Trial]]] = {c: [] for c in concurrencies}
    with tqdm(total=repeats * len(concurrencies) * len(groups), desc=f"bench {args.size}", unit="step") as bar:
        for r in range(repeats):
            for k in range(len(groups)):
                group = groups[(k + r) % len(groups)]
                if group.config is not None:
                    apply_config(run.procs["guarded"], texts[group.config], args.workers)
                for c in concurrencies:
                    order = step_order(group, c, bare_first=(r + k) % 2 == 0)
                    if c == 1:
                        steps[c].append(dict(zip(order, run.alternating(order, group.tight))))
                    else:
                        steps[c].append(dict(zip(order, run.interleaved(order, c, group.tight))))
                    bar.update()
    return steps


def assemble(args, steps: dict[int, list[dict[str, Trial]]], memory: PeakMemory, n_rows: int,
             latency: dict) -> dict:
    concurrencies = list(steps)
    summary = {c: report.summarize_steps(steps[c]) for c in concurrencies}
    on, off = drift_sides()
    by_conc = {c: report.ratios_at(steps[c], drift_on=on, drift_off=off) for c in concurrencies}
    ratios = report.headline_ratios(by_conc)
    peak_mb = {name: {r: b / 2**20 for r, b in roles.items()} for name, roles in memory.peak.items()}
    start_mb = {name: {r: b / 2**20 for r, b in roles.items()} for name, roles in memory.start.items()}
    delta = peak_mb["guarded"]["worker"] - peak_mb["bare"]["worker"]
    gen = [s for per_c in summary.values() for s in per_c.values()]
    return {
        "size": args.size,
        "command": "make bench" if args.size == "full" else "make bench-quick",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "settings": {
            "workers": args.workers, "concurrency": concurrencies, **asdict(SIZES[args.size]),
            "batch_rows": args.batch_rows, "distinct_rows": n_rows,
            "guarded_configurations": configurations(max(concurrencies)),
            "shipped_servers": shipped_servers(max(concurrencies)),
            "drift_server": dict([drift_server(max(concurrencies))]),
            "drift_sides": {"on": on, "off": off},
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
        "reference_model": latency,
        "targets": report.check_targets(ratios, delta, latency["one_row_predict_proba_ms_median"]),
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
    m, st = results["machine"], results["settings"]
    block = "\n".join([
        TABLE_START,
        (f"Measured {results['finished_at']} by `{results['command']}` on {m['cpus']} CPUs "
        f"({m['cpu']}), {m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}, "
        f"BentoML {m['bentoml']}, scikit-learn {m['scikit_learn']}; load average at start "
        f"{m['load_average_at_start']}. {st['workers']} worker(s) per server, {st['repeats']} "
        f"repeats per scenario and concurrency, each {st['seconds']} s a side at concurrency 1 "
        f"(alternating with bare request by request) and {st['seconds_concurrent']} s above."),
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
    unmeasured = [k for k, c in results["targets"].items() if c["met"] is None]
    if unmeasured:
        print(f"\nnot measured in this run: {', '.join(unmeasured)}", file=sys.stderr)
    print(f"\ntargets missed: {', '.join(missed) or 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
