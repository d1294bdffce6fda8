"""py-spy samples one server process under load; prints where its time goes, and the guard's CPU
per request by component.

    python -m bench.profile [--concurrency 16] [--seconds 20] [--shipped] [--bare] [--env KEY=VALUE]

The collapsed stacks go to bench/runs/ (ignored by git) with a JSON summary beside them. The
summary lists the functions with the most samples anywhere on the stack (inclusive), then the
breakdown: each sample is given to the component of the leaf-most frame of mlguard's own code in
it (`component`), and the process's measured CPU per request is shared out over the components in
proportion to their samples. A sample whose leaf-most own frame is beneath BentoML's or Starlette's
(serving the HTTP request the way bare BentoML does) belongs to "bentoml/http".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from bench.loadgen import RequestCycle, Target, encode_post, run_trial
from bench.run import BENCH, rows_on_route
from bench.servers import (
    BARE_TARGET,
    role,
    wait_for_drift_process,
    wait_quiet,
)
from tests.support.server import ServerProcess

PY_SPY = str(Path(sys.executable).parent / "py-spy")

# Library frames that serve the request for BentoML itself (in bare too): a sample reaching one of
# these before any mlguard frame, walking from the leaf, is BentoML's, whatever called it.
FRAMEWORK = ("starlette/", "bentoml/", "_bentoml_impl/", "_bentoml_sdk/", "uvicorn/", "asgi/",
             "trace/", "opentelemetry/", "anyio/", "httptools")
OWN = ("service/", "monitors/", "fallbacks/", "apps/")
# Work done on behalf of one of these, wherever in it (the prediction log's writer thread runs the
# shadow rules and SQLite; the drift feed's flush calls BentoML's client), is theirs.
OWNERS: list[tuple[str, str, str | None]] = [
    ("prediction log", "service/worker/prediction_log.py", None),
    ("prediction log", "service/store/", None),
    ("drift feed", "service/worker/drift_feed.py", "DriftFeed.flush"),
    ("drift feed", "service/worker/drift_feed.py", "DriftFeed._tick"),
]
# (component, file prefix, function name or None for any), first match wins.
COMPONENTS: list[tuple[str, str, str | None]] = [
    ("routing", "service/worker/runtime.py", "GuardedRuntime.routing_state"),
    ("routing", "service/worker/drift_feed.py", "DriftFeed.drift_active"),
    ("routing", "service/scoring/router.py", None),
    ("routing", "monitors/circuit.py", None),
    ("drift feed", "service/worker/drift_feed.py", None),
    ("input checks", "monitors/input_checks.py", None),
    ("metrics", "monitors/metrics.py", None),
    ("log line", "service/scoring/recorder.py", "_log_line"),
    ("metrics", "service/scoring/recorder.py", None),  # unless beneath it is logging (below)
    ("prediction log", "service/worker/prediction_log.py", None),
    ("prediction log", "service/store/", None),
    ("model", "apps/credit/model.py", None),
    ("model call", "service/scoring/model_call.py", None),
    ("model call", "service/scoring/micro_batch.py", None),
    ("model call", "service/scoring/model.py", None),
    ("model", "monitors/features.py", "FeatureSchema"),  # the model's input matrix, as bare builds it
    ("model call", "service/worker/runtime.py", "GuardedRuntime._predict"),
    ("model call", "service/scoring/faults.py", "FaultyModel"),
    ("rules", "service/scoring/faults.py", "FaultyHeuristic"),
    ("rules", "fallbacks/", None),
    ("rules", "apps/credit/rules.py", None),
    ("pipeline", "service/scoring/", None),  # routing per row, answers, output checks, request ids
    ("pipeline", "monitors/tasks.py", None),
    ("endpoint and answer", "service/factory.py", None),
    ("middlewares", "service/api/", None),
    ("background (config, state polls)", "service/worker/", None),
]
LOGGING = ("logging/", "json/")  # beneath the recorder: the per-prediction JSON log line
# A thread waiting (a poller between polls) that py-spy's non-blocking mode still sampled: no CPU.
IDLE = ("Condition.wait (threading.py", "Event.wait (threading.py")


def _frame(text: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame `function (file:line)`."""
    function, _, where = text.rpartition(" (")
    return function, where.rsplit(":", 1)[0]


def component(stack: list[str]) -> str:
    """The component a sample (frames root first) is spent in."""
    frames = [_frame(f) for f in stack]
    for name, prefix, func in OWNERS:
        if any(file.startswith(prefix) and (func is None or function.startswith(func)) for function, file in frames):
            return name
    for i in range(len(frames) - 1, -1, -1):
        function, file = frames[i]
        if file.startswith(FRAMEWORK):
            return "bentoml/http"
        if not file.startswith(OWN):
            continue  # a library mlguard called: keep walking up to the caller
        for name, prefix, func in COMPONENTS:
            if file.startswith(prefix) and (func is None or function.startswith(func)):
                if name == "metrics" and prefix.endswith("recorder.py") and any(
                    f.startswith(LOGGING) for _, f in frames[i + 1:]
                ):
                    return "log line"
                return name
        return "other mlguard"
    return "bentoml/http"  # the event loop, threads' bootstraps, no mlguard frame at all


def pid_of(server: ServerProcess, wanted: str) -> int:
    """The first process of the server's tree in that role (worker, drift, arbiter)."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        if role(child) == wanted:
            return child.pid
    raise RuntimeError(f"no {wanted} process found")


def _stacks(collapsed: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        out.append((stack.split(";"), int(count)))
    return out


def summarize(collapsed: Path, top: int) -> list[tuple[str, float]]:
    inclusive: Counter = Counter()
    total = 0
    for frames, n in _stacks(collapsed):
        total += n
        for frame in set(frames):
            inclusive[frame] += n
    return [(frame, n / total) for frame, n in inclusive.most_common(top)]


def breakdown(collapsed: Path, cpu_us_per_request: float) -> dict[str, dict[str, float]]:
    """Per component: its share of the samples and that share of the CPU per request, largest first."""
    by: Counter = Counter()
    for frames, n in _stacks(collapsed):
        if not frames[-1].startswith(IDLE):
            by[component(frames)] += n
    total = sum(by.values()) or 1
    return {name: {"share": n / total, "us_per_request": cpu_us_per_request * n / total}
            for name, n in by.most_common()}


def print_breakdown(parts: dict[str, dict[str, float]], cpu_us: float, process: str) -> None:
    print(f"\n{process} CPU per request by component ({cpu_us:.0f} us in all):")
    for part, v in parts.items():
        print(f"{v['us_per_request']:8.1f} us  {v['share']:6.1%}  {part}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bare", action="store_true", help="profile the bare service instead")
    p.add_argument("--role", choices=("worker", "drift"), default="worker", help="which process")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--shipped", action="store_true",
                   help="the shipped config as is (default: the bench's model path, 10 s deadline, 16 slots)")
    p.add_argument("--label", default="", help="appended to the output files' names")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    p.add_argument("--collapsed", type=Path, help="no run: the breakdown of an earlier run's stacks")
    args = p.parse_args(argv)
    if args.collapsed:
        summary = json.loads(args.collapsed.with_suffix(".json").read_text())
        print_breakdown(breakdown(args.collapsed, summary["cpu_us_per_request"]), summary["cpu_us_per_request"], args.role)
        return 0
    runs = BENCH / "runs"
    runs.mkdir(exist_ok=True)
    name = "bare" if args.bare else "guarded"
    out = runs / f"profile-{name}-{args.role}-c{args.concurrency}{args.label and '-' + args.label}.txt"
    model_path = {} if args.shipped else {"MLGUARD_MODEL__TIMEOUT_MS": "10000", "MLGUARD_MODEL__MAX_CONCURRENCY": "16"}
    env = {**model_path, **dict(e.split("=", 1) for e in args.env)}
    with tempfile.TemporaryDirectory(prefix="mlguard-profile-") as tmp:
        guarded = ServerProcess(workdir=Path(tmp) / "guarded", env=env).start()
        server = guarded
        try:
            forced = env.get("MLGUARD_ROUTING__MODE") == "fallback"
            rows = rows_on_route(guarded, "heuristic" if forced else "model")
            if args.bare:
                server = ServerProcess(target=BARE_TARGET, workdir=Path(tmp) / "bare").start()
            else:
                wait_for_drift_process(server)
            wait_quiet(server)
            target = Target(server.port, RequestCycle(
                [encode_post(server.port, "/predict", json.dumps(r).encode()) for r in rows]))
            run_trial(target, args.concurrency, 2.0)  # warm-up: threads started, heap grown
            spied = psutil.Process(pid_of(server, args.role))
            spy = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(spied.pid), "--duration", str(int(args.seconds)),
                 "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            with ThreadPoolExecutor(1) as pool:
                before = spied.cpu_times()
                load = pool.submit(run_trial, target, args.concurrency, args.seconds + 2)
                trial = load.result()
                after = spied.cpu_times()
                spy.wait(args.seconds + 60)
            cpu_us = 1e6 * ((after.user - before.user) + (after.system - before.system)) / max(trial.requests, 1)
            print(f"load: {trial.requests / trial.seconds:.1f} requests/s, {trial.errors} errors, "
                  f"routes {dict(trial.routes)}; {args.role} CPU {cpu_us:.0f} us per request", file=sys.stderr)
        finally:
            for s in {guarded, server}:
                s.stop()
    for frame, share in summarize(out, args.top):
        print(f"{share:6.1%}  {frame}")
    parts = breakdown(out, cpu_us)
    print_breakdown(parts, cpu_us, args.role)
    summary = {"requests_per_s": trial.requests / trial.seconds, "cpu_us_per_request": cpu_us,
               "routes": dict(trial.routes), "concurrency": args.concurrency, "env": env,
               "shipped": args.shipped, "components": parts}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ncollapsed stacks: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
