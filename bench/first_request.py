"""The first request after start against the median of the next ones (docs/BENCHMARKS.md,
"First request after start").

Each run starts one `bentoml serve` of the credit app with 1 worker, waits until /readyz says
ready, opens the client's connection (GET /readyz), then times the first POST /predict and the
next `--next` (100) ones, one after another, and stops the server. What the first one pays beyond
the median is the cold start a client meets: lazy imports, first-call allocations of the model's
framework, the guard's first pass.

Current code (the model is warmed up at load):
    .venv/bin/python -m bench.first_request --label after
Another checkout, e.g. a commit without warm-up, with a store its own training filled:
    git worktree add --detach /tmp/before <commit>
    (cd /tmp/before && BENTOML_HOME=/tmp/before-store ../main/.venv/bin/python -m training.train)
    .venv/bin/python -m bench.first_request --label before --checkout /tmp/before \\
        --target service.credit_service:CreditRiskService --bentoml-home /tmp/before-store

A script, not a test: it reports figures and asserts nothing about them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.data import GOOD_ROW
from tests.support.server import CREDIT_SERVICE, ROOT, ServerProcess


def one_run(checkout: Path, target: str, config_text: str, next_n: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="mlguard-first-request-"))
    server = ServerProcess(
        target=target, workdir=workdir, workers=1, config_text=config_text, cwd=checkout,
        env={"PYTHONPATH": str(checkout)},
    )
    server.start(timeout_s=180)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/readyz").status_code == 200  # the connection is open before timing
            timings, answers = [], []
            for _ in range(1 + next_n):
                started = time.perf_counter()
                response = client.post("/predict", json=GOOD_ROW)
                timings.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                answers.append(response.json())
    finally:
        server.stop()
        server.cleanup()
    first, rest = timings[0], timings[1:]
    median = statistics.median(rest)
    return {
        "first_ms": round(first, 2),
        "median_next_ms": round(median, 3),
        "ratio": round(first / median, 1),
        "first_route": answers[0]["route"],
        "first_reasons": answers[0]["reasons"],
        "next_routes": sorted({a["route"] for a in answers[1:]}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after", help="a name for the code measured")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the project checkout served")
    parser.add_argument("--target", default=CREDIT_SERVICE, help="module:Service in that checkout")
    parser.add_argument("--bentoml-home", type=Path, default=None,
                        help="the BentoML home whose models/ holds the model (default: $BENTOML_HOME)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the config served (default: the checkout's config/mlguard.yaml)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--next", dest="next_n", type=int, default=100)
    args = parser.parse_args(argv)

    os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml"))
    if args.bentoml_home:  # ServerProcess links this home's models/ into each server's own home
        os.environ["BENTOML_HOME"] = str(args.bentoml_home)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    config_text = (args.config or args.checkout / "config" / "mlguard.yaml").read_text()

    runs = []
    for i in range(args.runs):
        run = one_run(args.checkout.resolve(), args.target, config_text, args.next_n)
        runs.append(run)
        print(json.dumps({"label": args.label, "run": i + 1, **run}), flush=True)
    print(f"{args.label}: first {statistics.median(r['first_ms'] for r in runs):.1f} ms, "
          f"median of next {args.next_n} {statistics.median(r['median_next_ms'] for r in runs):.2f} ms "
          f"(medians of {args.runs} runs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
