"""What 1,000 predictions cost the shared PostgreSQL store: rows, bytes and transactions.

Starts one credit instance on a fresh database of the machine's PostgreSQL, lets it settle, sends
1,000 single-row predictions from four threads, waits for the write buffers to drain, and reads
PostgreSQL's own counters (pg_stat_database, pg_total_relation_size) before and after. The idle
part (override polling, performance checks, the judge's reads) is measured over the same time
without traffic and subtracted (docs/SCALING.md).
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import httpx
import psycopg

from tests.support.data import held_out_rows
from tests.support.postgres import fresh_database
from tests.support.server import ServerProcess

# PostgreSQL's backends report their statistics when idle, at most every 10 s (PGSTAT_IDLE_INTERVAL).
STATS_FLUSH_S = 11.0


def counters(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        stats = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted, tup_returned + tup_fetched "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        size = conn.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "WHERE c.relname LIKE 'mlguard_predictions%' AND c.relkind IN ('r', 'i')"
        ).fetchone()[0]
    return {"transactions": stats[0], "rows_inserted": stats[1], "rows_read": stats[2],
            "prediction_log_bytes": int(size)}


def minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def measure(n: int) -> dict:
    with fresh_database() as url:
        server = ServerProcess(workers=1, env={"MLGUARD_STORE__URL": url, "MLGUARD_DRIFT__ACTION": "alert"})
        server.start()
        try:
            time.sleep(15)  # the monitoring process up, the schema migrated
            rows = (held_out_rows(891) * (n // 891 + 1))[:n]
            before = counters(url)
            started = time.monotonic()
            sent = iter(range(n))
            lock = threading.Lock()

            def worker() -> None:
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    while True:
                        with lock:
                            i = next(sent, None)
                        if i is None:
                            return
                        c.post("/predict", json=rows[i]).raise_for_status()

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(2)  # the last flush
            busy_s = time.monotonic() - started
            time.sleep(STATS_FLUSH_S)
            loaded = minus(counters(url), before)
            idle_before = counters(url)
            time.sleep(busy_s + STATS_FLUSH_S)
            idle = minus(counters(url), idle_before)
            idle = {k: round(v * busy_s / (busy_s + STATS_FLUSH_S)) for k, v in idle.items()}
        finally:
            server.stop()
            server.cleanup()
    traffic = {k: loaded[k] - (idle[k] if k != "prediction_log_bytes" else 0) for k in loaded}
    return {"predictions": n, "seconds": round(busy_s, 2), "with_traffic": loaded,
            "idle_same_time": idle, "per_1000_predictions": {k: round(v * 1000 / n) for k, v in traffic.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=1000)
    print(json.dumps(measure(parser.parse_args().predictions), indent=2))


if __name__ == "__main__":
    main()
