"""The write-behind log: exact accounting, bounded memory while the store is down, owned thread."""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from service.store import Backoff, PredictionRecord, PredictionStore, WriteBehindLog, open_store
from tests.support.postgres import fresh_database, server_address, via_port
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import wait_until

APP = "credit"


def prepare(items: list[int]) -> list[PredictionRecord]:
    """What the worker's hook does: one record per handed-over item, built off the request path."""
    return [
        PredictionRecord(request_id=f"r{i}", ts=float(i), app=APP, model_version="v1",
                         route="model", cause="none", answer={"probability": 0.5})
        for i in items
    ]


class Tally:
    """The callbacks' view of the log, as the Prometheus counter would see it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.up: list[bool] = []

    def on_written(self, n: int) -> None:
        with self.lock:
            self.written += n

    def on_dropped(self, n: int) -> None:
        with self.lock:
            self.dropped += n

    def store_up(self, ok: bool) -> None:
        self.up.append(ok)

    def hooks(self) -> dict:
        return {"on_written": self.on_written, "on_dropped": self.on_dropped,
                "store_up": self.store_up}


def stored_ids(store: PredictionStore) -> set[str]:
    with store.db.transaction(write=False) as cur:
        return {r[0] for r in cur.execute("SELECT request_id FROM mlguard_predictions").fetchall()}


def balanced(log: WriteBehindLog) -> bool:
    c = log.counts()
    return c.appended == c.written + c.dropped + c.buffered


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[PredictionStore]:
    with open_store(f"sqlite:///{tmp_path / 'p.db'}", APP) as store:
        yield store


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def test_every_appended_row_is_written_exactly_once(sqlite_store: PredictionStore) -> None:
    tally = Tally()
    log = WriteBehindLog(sqlite_store, prepare, capacity=100_000, batch_rows=50, interval_s=0.05,
                         **tally.hooks())
    log.start()

    def request_path(worker: int) -> None:
        for start in range(0, 500, 7):  # uneven chunks, as batches of requests arrive
            log.append([worker * 1000 + i for i in range(start, min(start + 7, 500))])

    threads = [threading.Thread(target=request_path, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.stop(timeout_s=30)
    c = log.counts()
    assert (c.appended, c.written, c.dropped, c.buffered) == (2000, 2000, 0, 0)
    assert (tally.written, tally.dropped, tally.up) == (2000, 0, [True])
    assert stored_ids(sqlite_store) == {f"r{w * 1000 + i}" for w in range(4) for i in range(500)}


def test_prepare_failures_drop_their_rows_and_log_once(
    sqlite_store: PredictionStore, caplog: pytest.LogCaptureFixture
) -> None:
    def fragile(items: list[int]) -> list[PredictionRecord]:
        if any(i < 0 for i in items):
            raise ValueError("a row the hook cannot handle")
        return prepare(items)

    tally = Tally()
    log = WriteBehindLog(sqlite_store, fragile, batch_rows=5, interval_s=0.01, **tally.hooks())
    log.start()
    with caplog.at_level(logging.ERROR, logger="service.store.write_behind"):
        # Appends of exactly batch_rows items: each batch is one append.
        for batch in ([1, 2, 3, 4, 5], [6, -7, 8, 9, 10], [-11, 12, 13, 14, 15], [16, 17, 18, 19, 20]):
            log.append(batch)
        log.stop(timeout_s=30)
    c = log.counts()
    assert (c.appended, c.written, c.dropped, c.buffered) == (20, 10, 10, 0)
    assert (tally.written, tally.dropped) == (10, 10)
    assert stored_ids(sqlite_store) == {f"r{i}" for i in (1, 2, 3, 4, 5, 16, 17, 18, 19, 20)}
    assert sum("prepare failed" in r.getMessage() for r in caplog.records) == 1


class SlowSink:
    """A sink whose first write waits until released: a monitoring process taking its time."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, records: Sequence[PredictionRecord]) -> None:
        self.calls.append(len(records))
        self.entered.set()
        assert self.release.wait(30)


def test_rows_arriving_during_a_slow_write_wait_for_the_next_flush() -> None:
    # Draining back to back after a slow write called the sink again at once with the few rows
    # that came meanwhile, over and over: its fixed cost per call paid many times a flush.
    sink = SlowSink()
    log = WriteBehindLog(sink, prepare, batch_rows=10, interval_s=3600)
    log.start()
    try:
        log.append(list(range(10)))  # a full batch: written at once
        assert sink.entered.wait(30)
        log.append([100, 101, 102])  # arrives while that write is in flight
        sink.release.set()
        assert wait_until(lambda: log.counts().written == 10, 30)
        time.sleep(0.5)
        assert sink.calls == [10] and log.counts().buffered == 3  # they wait for the interval
        log.append(list(range(200, 210)))  # ... or for a full batch (the oldest ten)
        assert wait_until(lambda: log.counts().written == 20, 30)
        time.sleep(0.5)
        assert sink.calls == [10, 10] and log.counts().buffered == 3
    finally:
        sink.release.set()
        log.stop(timeout_s=30)


def test_stop_flushes_and_joins_its_thread(sqlite_store: PredictionStore) -> None:
    tally = Tally()
    # Neither the interval nor a full batch would flush during the test: only stop() does.
    log = WriteBehindLog(sqlite_store, prepare, batch_rows=10_000, interval_s=3600,
                         **tally.hooks())
    log.start()
    thread = next(t for t in threading.enumerate() if t.name == log.name)
    with pytest.raises(RuntimeError):
        log.start()
    log.append(list(range(123)))
    assert log.buffer_rows() == 123 and log.counts().written == 0
    log.stop(timeout_s=30)
    assert not thread.is_alive()
    assert log.counts().written == 123 and len(stored_ids(sqlite_store)) == 123
    log.append([999])  # after stop: counted as dropped at once, never silently lost
    c = log.counts()
    assert (c.appended, c.written, c.dropped, c.buffered) == (124, 123, 1, 0)
    assert tally.dropped == 1


def test_backoff_doubles_to_its_cap() -> None:
    backoff = Backoff()  # the default: 0.5 s doubling to 5 s
    assert [backoff.failed() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.succeeded()
    assert backoff.failed() == 0.5


def test_store_down_keeps_the_newest_rows_up_to_capacity_and_resumes(postgres_url: str) -> None:
    tally = Tally()
    with TcpProxy(*server_address()) as proxy, \
            open_store(via_port(postgres_url, proxy.port), APP) as store, \
            open_store(postgres_url, APP) as direct:
        log = WriteBehindLog(store, prepare, capacity=50, batch_rows=20, interval_s=0.02,
                             backoff=Backoff(0.05, 0.2), **tally.hooks())
        log.start()
        log.append(list(range(10)))
        assert wait_until(lambda: log.counts().written == 10, timeout_s=10)

        proxy.cut()
        for start in range(10, 210, 10):
            log.append(list(range(start, start + 10)))
        assert wait_until(lambda: tally.up == [True, False], timeout_s=10)
        c = log.counts()
        assert (c.appended, c.written, c.buffered, c.dropped) == (210, 10, 50, 150)
        assert tally.dropped == 150

        proxy.restore()
        assert wait_until(lambda: log.counts().written == 60, timeout_s=20)
        assert tally.up == [True, False, True]
        # Overflow drops the oldest rows not in flight (a batch being written is at most
        # batch_rows): the newest capacity - batch_rows rows are always kept.
        stored = stored_ids(direct)
        assert len(stored) == 60 and {f"r{i}" for i in range(180, 210)} <= stored
        log.stop(timeout_s=10)
    c = log.counts()
    assert (c.appended, c.written, c.dropped, c.buffered) == (210, 60, 150, 0)
    assert (tally.written, tally.dropped) == (60, 150)


class CallsByThread:
    """The real store, recording which thread each write comes from."""

    def __init__(self, store: PredictionStore) -> None:
        self.store = store
        self.threads: list[int] = []

    def write(self, records: Sequence[PredictionRecord]) -> None:
        self.threads.append(threading.get_ident())
        self.store.write(records)


def test_append_never_waits_for_a_hanging_store(postgres_url: str) -> None:
    """The server accepts TCP but never answers: each write attempt hangs for the connect
    timeout. A thousand appends meanwhile neither call the store nor wait for it."""
    tally = Tally()
    with socket.create_server(("127.0.0.1", 0)) as silent:
        store = open_store(via_port(postgres_url, silent.getsockname()[1]), APP,
                           connect_now=False)
        sink = CallsByThread(store)
        log = WriteBehindLog(sink, prepare, capacity=100, batch_rows=10, interval_s=0.01,
                             **tally.hooks())
        log.start()
        thread = [t for t in threading.enumerate() if t.name == log.name]
        log.append([-1])
        assert wait_until(lambda: len(sink.threads) == 1, timeout_s=5)  # the flusher is stuck
        for i in range(1000):
            log.append([i])
        assert threading.get_ident() not in sink.threads
        assert len(sink.threads) == 1  # still the first attempt: the store is not hammered
        assert log.buffer_rows() == 100 and balanced(log)
        log.stop(timeout_s=0.2)  # shorter than the hang: the rest is counted as dropped
        c = log.counts()
        assert (c.appended, c.written, c.dropped, c.buffered) == (1001, 0, 1001, 0)
        # The abandoned write ends with its connect timeout; the thread then exits and counts
        # nothing twice.
        assert wait_until(lambda: not any(t.is_alive() for t in thread), timeout_s=10)
        assert log.counts() == c and tally.dropped == 1001 and tally.written == 0
        store.close()


def test_stop_while_the_store_is_down_counts_the_rest_as_dropped(postgres_url: str) -> None:
    tally = Tally()
    with TcpProxy(*server_address()) as proxy, \
            open_store(via_port(postgres_url, proxy.port), APP) as store:
        proxy.cut()
        log = WriteBehindLog(store, prepare, batch_rows=10, interval_s=0.01, **tally.hooks())
        log.start()
        thread = [t for t in threading.enumerate() if t.name == log.name]
        log.append(list(range(30)))
        assert wait_until(lambda: tally.up == [False], timeout_s=10)
        log.stop(timeout_s=0.5)
        assert wait_until(lambda: not any(t.is_alive() for t in thread), timeout_s=10)
    c = log.counts()
    assert (c.appended, c.written, c.dropped, c.buffered) == (30, 0, 30, 0)
    assert (tally.written, tally.dropped) == (0, 30)
