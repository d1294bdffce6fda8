"""`make feedback-demo`: concept drift that only labels can see.

Starts the credit service with `performance.action: route` and a small labelled window, then
replays held-out applications (the same population throughout: the drift monitor stays quiet)
and posts their outcomes to /feedback in three phases:

1. "as trained": the true outcomes; the model beats the rules, the model answers;
2. "changed world": outcomes that follow the rules' view of risk, not the model's (the world
   changed what a good answer is, the inputs did not move); the live yardstick turns negative
   and the rules take over (performance.below_rules), while the model keeps scoring in shadow;
3. "world back": the true outcomes again; the shadow evidence brings the model back.
"""
from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pandas as pd
from tqdm import tqdm

from apps.credit.app import CREDIT_APP
from apps.credit.data import TARGET, load_credit_data, split_data, to_rows
from tests.support.server import ServerProcess, shipped_config

TOKEN = "feedback-demo"
SMALL_WINDOW = {
    "action: alert": "action: route",
    "window: 2000": "window: 300",
    "min_labels: 200": "min_labels: 150",
    "check_interval_s: 30": "check_interval_s: 1",
    "shadow_ratio: 0.2": "shadow_ratio: 1.0",
}
BATCH = 20
Outcome = Callable[[dict, str], str]  # (row, true outcome) -> the outcome posted


def config_text() -> str:
    return shipped_config(SMALL_WINDOW)


def by_the_rules(rng: random.Random) -> Outcome:
    """The changed world: default happens with the rules' probability, whatever the model learned."""
    positive, negative = CREDIT_APP.task.classes[1], CREDIT_APP.task.classes[0]

    def outcome(row: dict, truth: str) -> str:
        return positive if rng.random() < CREDIT_APP.heuristic.score(row).probability else negative

    return outcome


def replay(client: httpx.Client, name: str, rows: list[dict], truths: list[str], outcome: Outcome,
           steps: int) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bar = tqdm(total=steps, desc=f"{name:>13}", unit="batch")
    for step in range(steps):
        start = (step * BATCH) % max(1, len(rows) - BATCH)
        batch = rows[start : start + BATCH]
        answered = client.post("/predict_batch", json={"applications": batch})
        answered.raise_for_status()
        predictions = answered.json()["predictions"]
        posted = client.post("/feedback", headers=auth, json={"outcomes": [
            {"request_id": p["request_id"], "outcome": outcome(row, truths[start + i])}
            for i, (row, p) in enumerate(zip(batch, predictions))
        ]})
        posted.raise_for_status()
        routes = Counter(p["route"] for p in predictions)
        perf = client.get("/monitoring/performance", headers=auth).json()
        drift = client.get("/monitoring/drift").json()
        delta = perf.get("model_vs_rules") or {}
        interval = ("-" if delta.get("low") is None
                    else f"{delta['estimate']:+.3f} [{delta['low']:+.3f}, {delta['high']:+.3f}]")
        bar.set_postfix(model=routes["model"], rules=routes["heuristic"], drift=drift["policy_state"],
                        yardstick=interval, state=perf.get("state"))
        bar.update()
        time.sleep(0.2)
    bar.close()
    perf = client.get("/monitoring/performance", headers=auth).json()
    tqdm.write(f"after {name}: routing_to_fallback={perf['routing_to_fallback']} "
               f"model-minus-rules {perf['model_vs_rules']['metric']}="
               f"{perf['model_vs_rules']['estimate']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="batches of 20 rows per phase")
    args = parser.parse_args()
    split = split_data(load_credit_data())
    held_out = pd.concat([split.validation, split.test], ignore_index=True)
    rows = to_rows(held_out, CREDIT_APP.features.names)
    truths = held_out[TARGET].astype(str).tolist()
    server = ServerProcess(workers=1, config_text=config_text(),
                           env={"MLGUARD_FEEDBACK_TOKEN": TOKEN, "MLGUARD_MONITORING_TOKEN": TOKEN})
    print(f"starting the service on {server.url} (log: {server.log_path}) ...")
    server.start()
    rng = random.Random(7)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for name, outcome in (("as trained", lambda row, truth: truth),
                                  ("changed world", by_the_rules(rng)),
                                  ("world back", lambda row, truth: truth)):
                replay(client, name, rows, truths, outcome, args.steps)
    finally:
        server.stop()
        server.cleanup()


if __name__ == "__main__":
    main()
