"""`make drift-demo`: watch drift move traffic to the rules and back.

Starts the credit service with a small drift window (100 rows, a check every second), then
replays held-out applications: normal ones, then a shifted population (part-time applicants with
past records), then normal ones again, printing the route mix and the drift share as they change.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import httpx
import pandas as pd
from tqdm import tqdm

from apps.credit.app import CREDIT_APP
from apps.credit.data import load_credit_data, split_data, to_rows
from tests.support.server import ServerProcess, shipped_config

SMALL_WINDOW = {
    "window_size: 500": "window_size: 100",
    "min_samples: 300": "min_samples: 80",
    "check_interval_s: 10": "check_interval_s: 1",
    "exit_after: 3": "exit_after: 2",
}
BATCH = 20


def phases() -> list[tuple[str, list[dict]]]:
    split = split_data(load_credit_data())
    held_out = pd.concat([split.validation, split.test], ignore_index=True)
    names = CREDIT_APP.features.names
    shifted = held_out[held_out.job == "partime"]
    return [
        ("normal", to_rows(held_out.iloc[:600], names)),
        ("shifted", to_rows(shifted, names)),
        ("normal again", to_rows(held_out.iloc[600:1200], names)),
    ]


def config_text() -> str:
    return shipped_config(SMALL_WINDOW)


def wait_for_drift_process(client: httpx.Client, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get("/monitoring/drift").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("the drift process did not come up")


def replay(client: httpx.Client, name: str, rows: list[dict], steps: int) -> None:
    bar = tqdm(total=steps, desc=f"{name:>12}", unit="batch")
    for step in range(steps):
        start = (step * BATCH) % max(1, len(rows) - BATCH)
        answered = client.post("/predict_batch", json={"applications": rows[start : start + BATCH]})
        answered.raise_for_status()
        routes = Counter(p["route"] for p in answered.json()["predictions"])
        drift_rows = sum("drift.detected" in p["reasons"] for p in answered.json()["predictions"])
        status = client.get("/monitoring/drift").json()
        share = status["drift_share"]
        bar.set_postfix(
            model=routes["model"], rules=routes["heuristic"], drift_reason=drift_rows,
            share="-" if share is None else f"{share:.2f}", state=status["policy_state"],
        )
        bar.update()
        time.sleep(0.25)
    bar.close()
    s = client.get("/monitoring/drift").json()
    drifted = [n for n, f in s["features"].items() if f["drifted"]]
    tqdm.write(f"after {name}: routing_to_fallback={s['routing_to_fallback']} "
               f"drift_share={s['drift_share']} drifted={drifted}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="batches of 20 rows per phase")
    args = parser.parse_args()
    server = ServerProcess(workers=2, config_text=config_text())
    print(f"starting the service on {server.url} (log: {server.log_path}) ...")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            wait_for_drift_process(client)
            for name, rows in phases():
                replay(client, name, rows, args.steps)
    finally:
        server.stop()
        server.cleanup()


if __name__ == "__main__":
    main()
