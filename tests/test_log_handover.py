"""The prediction log's hand-over: a worker's rows written by the monitoring process, or by the
worker itself when that process cannot (service/worker/prediction_log.py).

The monitoring process's side here is the same `RecordWriter` its `log_rows` endpoint runs, called
through an in-process stand-in for BentoML's proxy; the real process is exercised over HTTP in
tests/test_drift_http.py and tests/test_store_http.py.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.credit.app import CREDIT_APP
from monitors.tasks import Output
from service.scoring.prediction import ROUTE_HEURISTIC, ROUTE_MODEL, Prediction, new_request_id
from service.store import PredictionStore, open_store
from service.worker.config import Settings
from service.worker.prediction_log import (
    LoggedRow,
    MonitoringProcessSink,
    RecordWriter,
    Redactor,
    decode_rows,
    encode_rows,
    to_wire,
)
from tests.support.data import credit_rows


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A running event loop in a thread: the worker's loop, which the proxy's calls need."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def writer(path: Path, settings: Settings | None = None) -> RecordWriter:
    store = open_store(f"sqlite:///{path}", CREDIT_APP.name)
    cfg = settings or Settings()
    return RecordWriter(CREDIT_APP, store, lambda: None, lambda: cfg, Redactor(salt="s"))


def stored(store: PredictionStore) -> dict[str, dict[str, Any]]:
    with store.db.transaction(write=False) as cur:
        ids = [r[0] for r in cur.execute("SELECT request_id FROM mlguard_predictions").fetchall()]
    return {i: store.get(i) for i in ids}


def handed_over(n: int) -> list:
    """What a worker's writer thread sends: answered rows, half by the model, half by the rules."""
    items = []
    for i, row in enumerate(credit_rows()[:n]):
        route = ROUTE_MODEL if i % 2 == 0 else ROUTE_HEURISTIC
        p = Prediction(new_request_id(), Output({"probability": 0.25, "decision": "approve"}),
                       route, reasons=[] if route == ROUTE_MODEL else ["routing.fallback"],
                       model_version="credit_risk:v1")
        items.append((row, p, None))
    return to_wire(items)


class Proxy:
    """BentoML's proxy of the monitoring process, reduced to `to_async.log_rows`."""

    def __init__(self, log_rows: Any) -> None:
        self.to_async = self
        self.log_rows = log_rows


def test_a_batch_crosses_to_the_monitoring_process_unchanged() -> None:
    rows = handed_over(5)
    assert decode_rows(encode_rows(rows)) == rows
    assert all(type(r) is LoggedRow for r in decode_rows(encode_rows(rows)))


def test_the_monitoring_process_completes_and_writes_what_a_worker_hands_over(tmp_path, loop) -> None:
    remote, local = writer(tmp_path / "remote.db"), writer(tmp_path / "local.db")

    async def log_rows(batch: bytes) -> int:  # what the endpoint does with the message
        rows = decode_rows(batch)
        remote.write(rows)
        return len(rows)

    sink = MonitoringProcessSink(lambda: Proxy(log_rows), local, loop)
    rows = handed_over(6)
    sink.write(rows)
    logged = stored(remote.store)
    assert set(logged) == {r.request_id for r in rows}
    assert stored(local.store) == {}
    assert sink.written_by == "the monitoring process"
    for r in rows:
        record = logged[r.request_id]
        assert set(record["inputs"]) == set(r.inputs) and record["inputs"]["age"] == r.inputs["age"]
        assert record["answer"] == r.answer
        if r.route == ROUTE_MODEL:  # the rules' shadow, computed by the writer
            assert record["model_output"] == r.answer
            assert set(record["rules_output"]) == {"probability", "decision"}
        else:
            assert record["rules_output"] == r.answer and record["model_output"] is None


def test_a_failing_monitoring_process_leaves_the_writing_to_the_worker_for_a_while(
        tmp_path, loop) -> None:
    local = writer(tmp_path / "local.db")
    calls: list[int] = []

    async def log_rows(batch: bytes) -> int:
        calls.append(1)
        raise ConnectionRefusedError("the monitoring process is restarting")

    sink = MonitoringProcessSink(lambda: Proxy(log_rows), local, loop)
    first, second = handed_over(4), handed_over(4)
    sink.write(first)
    sink.write(second)  # within LOCAL_S of the failure: not tried again
    assert calls == [1]
    assert set(stored(local.store)) == {r.request_id for r in first + second}
    assert sink.written_by.startswith("this worker")


def test_a_stuck_monitoring_process_is_waited_for_no_longer_than_the_timeout(tmp_path, loop) -> None:
    local = writer(tmp_path / "local.db")
    remote = writer(tmp_path / "remote.db")
    cancelled = threading.Event()
    stuck = threading.Event()

    async def log_rows(batch: bytes) -> int:
        if not stuck.is_set():  # answers once, then hangs
            stuck.set()
            remote.write(decode_rows(batch))
            return 0
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()  # the call is abandoned, not left running on the worker's loop
            raise
        return 0

    sink = MonitoringProcessSink(lambda: Proxy(log_rows), local, loop, timeout_s=0.2)
    sink.write(handed_over(2))
    rows = handed_over(4)
    started = time.monotonic()
    sink.write(rows)
    assert time.monotonic() - started < 30  # not the stuck call's 60 s
    assert set(stored(local.store)) == {r.request_id for r in rows}
    assert cancelled.wait(5)


def test_a_stopping_worker_takes_the_call_in_flight_back(tmp_path, loop) -> None:
    local = writer(tmp_path / "local.db")
    entered = threading.Event()

    async def log_rows(batch: bytes) -> int:
        entered.set()
        await asyncio.sleep(60)  # the monitoring process, stopping too, never answers
        return 0

    sink = MonitoringProcessSink(lambda: Proxy(log_rows), local, loop, timeout_s=60)
    rows = handed_over(3)
    writing = threading.Thread(target=sink.write, args=(rows,))
    writing.start()
    assert entered.wait(10)
    sink.hand_back()  # what the worker's shutdown does
    writing.join(10)
    assert not writing.is_alive()
    assert set(stored(local.store)) == {r.request_id for r in rows}
    later = handed_over(2)
    sink.write(later)  # after that, straight to this worker's writer
    assert set(stored(local.store)) >= {r.request_id for r in later}


def test_when_neither_can_write_the_rows_stay_with_the_write_behind(tmp_path, loop) -> None:
    # The store is out of this worker's reach too: its "folder" is a file.
    (tmp_path / "not-a-folder").write_text("")
    local = RecordWriter(CREDIT_APP, open_store(f"sqlite:///{tmp_path}/not-a-folder/x.db",
                                                CREDIT_APP.name, connect_now=False),
                         lambda: None, Settings, Redactor(salt="s"))

    async def log_rows(batch: bytes) -> int:
        raise RuntimeError("store down")

    sink = MonitoringProcessSink(lambda: Proxy(log_rows), local, loop)
    with pytest.raises(Exception):  # noqa: B017 -- any store error: the write-behind retries
        sink.write(handed_over(2))


def test_privacy_settings_apply_where_the_rows_are_written(tmp_path) -> None:
    cfg = Settings.model_validate({"store": {"redact": {"income": "drop", "job": "hash"}}})
    local = writer(tmp_path / "local.db", cfg)
    rows = handed_over(2)
    local.write(rows)
    for r in rows:
        inputs = stored(local.store)[r.request_id]["inputs"]
        assert "income" not in inputs
        assert inputs["job"].startswith("sha256:") and inputs["job"] != r.inputs["job"]
        assert inputs["age"] == r.inputs["age"]
