"""`make bench-profile`: py-spy samples one guarded worker under load; prints where its time goes.

The collapsed stacks go to bench/runs/ (ignored by git); the summary lists the functions with the
most samples anywhere on the stack (inclusive) among the mlguard, BentoML and model frames.
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


def pid_of(server: ServerProcess, wanted: str) -> int:
    """The first process of the server's tree in that role (worker, drift, arbiter)."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        if role(child) == wanted:
            return child.pid
    raise RuntimeError(f"no {wanted} process found")


def summarize(collapsed: Path, top: int) -> list[tuple[str, float]]:
    inclusive: Counter = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            inclusive[frame] += n
    return [(frame, n / total) for frame, n in inclusive.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bare", action="store_true", help="profile the bare service instead")
    p.add_argument("--role", choices=("worker", "drift"), default="worker", help="which process")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--top", type=int, default=60)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    args = p.parse_args(argv)
    runs = BENCH / "runs"
    runs.mkdir(exist_ok=True)
    name = "bare" if args.bare else "guarded"
    out = runs / f"profile-{name}-{args.role}-c{args.concurrency}.txt"
    env = {"MLGUARD_MODEL__TIMEOUT_MS": "10000", "MLGUARD_MODEL__MAX_CONCURRENCY": "16",
           **dict(e.split("=", 1) for e in args.env)}
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
            spy = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(pid_of(server, args.role)), "--duration", str(int(args.seconds)),
                 "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            with ThreadPoolExecutor(1) as pool:
                load = pool.submit(run_trial, target, args.concurrency, args.seconds + 2)
                spy.wait(args.seconds + 60)
                trial = load.result()
            print(f"load: {trial.requests / trial.seconds:.1f} requests/s, {trial.errors} errors, "
                  f"routes {dict(trial.routes)}", file=sys.stderr)
        finally:
            for s in {guarded, server}:
                s.stop()
    for frame, share in summarize(out, args.top):
        print(f"{share:6.1%}  {frame}")
    print(f"\ncollapsed stacks: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
