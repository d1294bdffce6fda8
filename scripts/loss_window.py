"""How many answered predictions the prediction log loses when a worker is killed with SIGKILL.

Starts the credit service (one worker, the default SQLite store), sends single-row predictions
from four threads, kills the worker with `kill -9` mid-load (BentoML starts a new one), keeps the
load going, then compares the answered request ids with the rows in the store. Prints the lost
rows and the time span they cover: the loss window (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import threading
import time

import httpx

from tests.support.data import held_out_rows
from tests.support.server import ServerProcess
from tests.support.wait import wait_until


def trial(seconds_before: float, seconds_after: float) -> dict:
    server = ServerProcess(workers=1, env={"MLGUARD_DRIFT__ACTION": "alert"})
    server.start()
    answered: list[tuple[str, float]] = []
    stop = threading.Event()
    rows = held_out_rows(200)

    def load(offset: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            i = offset
            while not stop.is_set():
                try:
                    r = c.post("/predict", json=rows[i % len(rows)])
                except httpx.HTTPError:
                    time.sleep(0.05)  # the worker is gone: wait for its successor
                    continue
                if r.status_code == 200:
                    answered.append((r.json()["request_id"], time.time()))
                i += 4

    try:
        pid = httpx.get(f"{server.url}/admin/state", timeout=10).json()["worker_pid"]
        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(seconds_before)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        time.sleep(seconds_after)
        stop.set()
        for t in threads:
            t.join()
        db = server.workdir / "state" / "credit_risk" / "predictions.db"
        wait_until(lambda: _count(db) >= len(answered) - 2000, 10)
        time.sleep(2)  # the new worker's last flush
        stored = _ids(db)
        lost = [(rid, at) for rid, at in answered if rid not in stored]
        before_kill = sum(at <= killed_at for _, at in answered)
        return {
            "answered": len(answered),
            "answered_before_kill": before_kill,
            "lost": len(lost),
            "lost_span_s": (max(at for _, at in lost) - min(at for _, at in lost)) if lost else 0.0,
            "lost_answered_within_s_of_kill": max((killed_at - at for _, at in lost), default=0.0),
        }
    finally:
        server.stop()
        server.cleanup()


def _ids(db) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM mlguard_predictions")}


def _count(db) -> int:
    try:
        return len(_ids(db))
    except sqlite3.Error:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    for n in range(args.trials):
        print(f"trial {n + 1}: {trial(4.0, 6.0)}", flush=True)


if __name__ == "__main__":
    main()
