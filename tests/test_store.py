"""The prediction store on a real SQLite file and a real PostgreSQL database (fresh per test)."""
from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from service.store import (
    FeedbackResult,
    Outcome,
    PredictionRecord,
    PredictionStore,
    SchemaTooNewError,
    open_store,
)
from service.store.export import export_labelled
from service.store.schema import MIGRATIONS, Migration, latest_version, migrate, schema_version
from service.store.urls import parse_store_url
from tests.support.postgres import fresh_database, server_address, via_port
from tests.support.tcp_proxy import TcpProxy

APP = "credit"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'predictions.db'}"  # an absolute path: sqlite:////tmp/...
    else:
        with fresh_database() as url:
            yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[PredictionStore]:
    s = open_store(store_url, APP)
    yield s
    s.close()


def record(request_id: str, ts: float = 1000.0, **changes: object) -> PredictionRecord:
    base = PredictionRecord(
        request_id=request_id, ts=ts, app=APP, model_version="credit_model:v1", route="model",
        cause="none", reasons=[], inputs={"age": 30, "home": "rent", "income": 129.5},
        model_output={"probability": 0.3, "decision": "approve"},
        rules_output={"probability": 0.4, "decision": "approve"},
        answer={"probability": 0.3, "decision": "approve"},
    )
    return dataclasses.replace(base, **changes)


def versions(store: PredictionStore) -> list[int]:
    with store.db.transaction(write=False) as cur:
        rows = cur.execute("SELECT version FROM mlguard_schema_migrations ORDER BY 1").fetchall()
    return [r[0] for r in rows]


# -- schema --------------------------------------------------------------------------------


def test_urls_name_the_database() -> None:
    assert parse_store_url("sqlite:///state/p.db").target == "state/p.db"
    assert parse_store_url("sqlite:////var/lib/p.db").target == "/var/lib/p.db"
    pg = parse_store_url("postgresql://u:secret@db:5432/log")
    assert pg.dialect == "postgresql" and "secret" not in pg.display()
    for bad in ("mysql://x/y", "predictions.db", "sqlite:///:memory:", "sqlite://"):
        with pytest.raises(ValueError):
            parse_store_url(bad)


def test_concurrent_starts_migrate_once(store_url: str) -> None:
    """Four processes' worth of stores (one connection each) start at the same moment."""
    barrier = threading.Barrier(4)
    stores: list[PredictionStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            stores.append(open_store(store_url, APP))
        except BaseException as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = list(range(1, latest_version() + 1))
    assert versions(stores[0]) == every
    assert migrate(stores[0].db) == latest_version()  # again: nothing to do
    assert versions(stores[0]) == every
    for s in stores:
        s.close()


def test_a_new_migration_upgrades_and_a_newer_schema_is_refused(store_url: str) -> None:
    with open_store(store_url, APP) as old:
        old.write([record("kept")])
        assert schema_version(old.db) == latest_version()
    known = latest_version()
    extra = Migration(known + 1, "test only", (
        "ALTER TABLE mlguard_predictions ADD COLUMN note TEXT",
        "CREATE TABLE mlguard_test_extra (id TEXT PRIMARY KEY)",
    ))
    with open_store(store_url, APP, migrations=(*MIGRATIONS, extra)) as upgraded:
        assert versions(upgraded) == list(range(1, known + 2))
        assert upgraded.get("kept")["request_id"] == "kept"  # the rows survive the upgrade
        with upgraded.db.transaction() as cur:
            cur.execute("INSERT INTO mlguard_test_extra (id) VALUES (?)", ("x",))
            cur.execute("UPDATE mlguard_predictions SET note = ? WHERE request_id = ?", ("n", "kept"))
    # This mlguard knows fewer versions: it refuses, at start or at the first call.
    with pytest.raises(SchemaTooNewError, match=f"schema version {known + 1}.*up to {known}"):
        open_store(store_url, APP)
    lazy = open_store(store_url, APP, connect_now=False)
    with pytest.raises(SchemaTooNewError):
        lazy.get("kept")
    lazy.close()


# -- the prediction log --------------------------------------------------------------------


def test_write_get_delete(store: PredictionStore, store_url: str) -> None:
    binary = record("b1", reasons=["input.out_of_range:age"], route="heuristic",
                    cause="input.out_of_range", model_output=None)
    multiclass = record("m1", inputs=None, answer={"decision": "red", "probabilities":
                                                   {"red": 0.7, "white": 0.3}})
    regression = record("r1", rules_output=None, answer={"value": 151.25})
    store.write([binary, multiclass, regression])
    store.write([binary, record("b2")])  # a retried batch, overlapping: no error, no duplicate
    assert store.window_counts(0) == (4, 0)
    for r in (binary, multiclass, regression):
        got = store.get(r.request_id)
        assert got == {**dataclasses.asdict(r), "outcome": None, "outcome_received_at": None}
    assert store.get("never") is None
    with open_store(store_url, "wine") as other_app:
        assert other_app.get("b1") is None  # each plug-in reads its own rows
        assert other_app.delete("b1") is False
    store.add_outcome("b1", "bad", 2000.0, pending_ok=False)
    assert store.delete("b1") is True
    assert store.get("b1") is None
    assert store.delete("b1") is False
    store.write([binary])  # the id comes back (a replayed batch): its erased outcome does not
    assert store.get("b1")["outcome"] is None


def test_feedback_outcomes(store: PredictionStore) -> None:
    store.write([record("a"), record("r", answer={"value": 3.5})])
    assert store.add_outcome("a", "good", 2000.0, pending_ok=False) is FeedbackResult.RECORDED
    assert store.add_outcome("a", "good", 2001.0, pending_ok=False) is FeedbackResult.DUPLICATE
    assert store.add_outcome("a", "bad", 2002.0, pending_ok=True) is FeedbackResult.CONFLICT
    got = store.get("a")
    assert (got["outcome"], got["outcome_received_at"]) == ("good", 2000.0)  # the first stays

    assert store.add_outcome("r", 3.5, 2000.0, pending_ok=False) is FeedbackResult.RECORDED
    assert store.add_outcome("r", 3.5, 2000.0, pending_ok=False) is FeedbackResult.DUPLICATE
    assert store.add_outcome("r", 3.25, 2000.0, pending_ok=False) is FeedbackResult.CONFLICT

    assert store.add_outcome("nobody", "bad", 2000.0, pending_ok=False) is FeedbackResult.UNKNOWN
    store.write([record("nobody")])
    assert store.get("nobody")["outcome"] is None  # UNKNOWN stored nothing

    # Still in some worker's buffer: accepted, and joined once the row lands.
    assert store.add_outcome("late", "bad", 2000.0, pending_ok=True) is FeedbackResult.PENDING
    assert store.add_outcome("late", "bad", 2001.0, pending_ok=True) is FeedbackResult.DUPLICATE
    assert store.get("late") is None
    assert {r.request_id for r in store.labelled(10, 0)} == {"a", "r"}
    store.write([record("late", ts=1500.0)])
    assert store.get("late")["outcome"] == "bad"
    newest = store.labelled(10, 0)[0]
    assert (newest.request_id, newest.outcome, newest.received_at) == ("late", "bad", 2000.0)

    results = store.add_outcomes([
        Outcome("nobody", "good", 3000.0),
        Outcome("nobody", "good", 3000.0),  # twice in one batch: the second is a duplicate
        Outcome("a", "bad", 3000.0),
        Outcome("ghost", "good", 3000.0),
        Outcome("ghost2", "good", 3000.0, pending_ok=True),
    ])
    assert results == [FeedbackResult.RECORDED, FeedbackResult.DUPLICATE,
                       FeedbackResult.CONFLICT, FeedbackResult.UNKNOWN, FeedbackResult.PENDING]


def test_feedback_for_another_plug_ins_prediction_is_unknown(store: PredictionStore,
                                                             store_url: str) -> None:
    """Plug-ins sharing a database: an id one of them issued is unknown to the others, even
    within the pending horizon, and its own outcome still lands."""
    other = open_store(store_url, "churn")
    try:
        other.write([record("theirs", app="churn")])
        assert store.add_outcome("theirs", "bad", 2000.0, pending_ok=True) is FeedbackResult.UNKNOWN
        assert store.add_outcomes([Outcome("theirs", "bad", 2000.0, pending_ok=True)]) == [
            FeedbackResult.UNKNOWN]
        assert other.add_outcome("theirs", "good", 2001.0, pending_ok=False) is FeedbackResult.RECORDED
        assert other.get("theirs")["outcome"] == "good" and store.get("theirs") is None
    finally:
        other.close()


def test_conflicting_outcomes_posted_at_once_record_one(store: PredictionStore,
                                                        store_url: str) -> None:
    """Four workers (a store object each) post different outcomes for the same ids at once."""
    ids = [f"id{i}" for i in range(6)]
    store.write([record(i) for i in ids[:4]])  # the last two are still "in a buffer"
    workers = [open_store(store_url, APP) for _ in range(4)]
    barrier = threading.Barrier(len(workers))
    results: dict[str, dict[int, FeedbackResult]] = {i: {} for i in ids}

    def post(w: int) -> None:
        for request_id in ids:
            barrier.wait()
            results[request_id][w] = workers[w].add_outcome(
                request_id, f"class{w}", 2000.0, pending_ok=True
            )

    threads = [threading.Thread(target=post, args=(w,)) for w in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for request_id in ids:
        by_worker = results[request_id]
        first = FeedbackResult.RECORDED if request_id in ids[:4] else FeedbackResult.PENDING
        winners = [w for w, r in by_worker.items() if r is first]
        assert len(winners) == 1, by_worker
        assert sorted(r.value for r in by_worker.values()) == sorted(
            [first.value] + [FeedbackResult.CONFLICT.value] * 3)
        if request_id in ids[:4]:
            assert store.get(request_id)["outcome"] == f"class{winners[0]}"
    for w in workers:
        w.close()


# -- reading -------------------------------------------------------------------------------


def test_labelled_order_limit_since_and_coverage(store: PredictionStore, store_url: str) -> None:
    store.write([record(f"p{i}", ts=1000.0 + i, route="model" if i % 4 else "heuristic")
                 for i in range(10)])
    for i in range(0, 10, 2):
        store.add_outcome(f"p{i}", "bad" if i % 4 else "good", 5000.0 + i, pending_ok=False)
    with open_store(store_url, "wine") as other:
        other.write([dataclasses.replace(record("w1", ts=1009.5), app="wine")])
        other.add_outcome("w1", "red", 6000.0, pending_ok=False)

    assert [r.ts for r in store.labelled(3, 0)] == [1008.0, 1006.0, 1004.0]
    assert [r.request_id for r in store.labelled(None, 1005.0)] == ["p8", "p6"]
    assert len(store.labelled(100, 0)) == 5
    row = store.labelled(1, 0)[0]
    assert (row.route, row.outcome, row.received_at, row.inputs) == ("heuristic", "good", 5008.0,
                                                                     None)
    assert row.model_output == {"probability": 0.3, "decision": "approve"}
    assert row.rules_output == {"probability": 0.4, "decision": "approve"}
    assert store.labelled(1, 0, with_inputs=True)[0].inputs == record("x").inputs
    assert store.window_counts(0) == (10, 5)
    assert store.window_counts(1005.0) == (5, 2)
    assert store.window_counts(2000.0) == (0, 0)


def test_purge_removes_old_rows_their_outcomes_and_orphans(store: PredictionStore) -> None:
    store.write([record(f"p{i}", ts=100.0 + i) for i in range(5)])
    for i in range(5):
        store.add_outcome(f"p{i}", "good", 200.0, pending_ok=False)
    store.add_outcome("orphan-old", "bad", 50.0, pending_ok=True)
    store.add_outcome("orphan-new", "bad", 500.0, pending_ok=True)

    assert store.purge(before_ts=103.0, orphan_before_ts=300.0) == (3, 1)
    assert store.window_counts(0) == (2, 2)
    assert [store.get(f"p{i}") is None for i in range(5)] == [True] * 3 + [False] * 2
    store.write([record("p0", ts=100.0), record("orphan-old"), record("orphan-new")])
    assert store.get("p0")["outcome"] is None  # its outcome went with it
    assert store.get("orphan-old")["outcome"] is None
    assert store.get("orphan-new")["outcome"] == "bad"  # recent orphans wait for their row
    assert store.purge(before_ts=0.0, orphan_before_ts=0.0) == (0, 0)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_export_round_trip(store: PredictionStore, tmp_path: Path, suffix: str) -> None:
    rows = [
        record("e0", ts=1.0, inputs={"age": 30, "home": "rent"}),
        record("e1", ts=2.0, inputs={"age": 41, "home": "owner", "income": 90.5}, route="heuristic"),
        record("e2", ts=3.0, inputs=None),  # logged with store.log_inputs off
        record("e3", ts=4.0, model_version="credit_model:v2"),
        record("unlabelled", ts=5.0),
    ]
    store.write(rows)
    for i, outcome in enumerate(["good", "bad", "good", "bad"]):
        store.add_outcome(f"e{i}", outcome, 10.0, pending_ok=False)

    path = tmp_path / "out" / f"labelled{suffix}"
    assert export_labelled(store, path) == 4
    frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    assert list(frame.columns) == ["age", "home", "income", "outcome", "model_version", "route",
                                   "ts", "request_id"]
    assert list(frame["request_id"]) == ["e0", "e1", "e2", "e3"]  # oldest first
    assert list(frame["outcome"]) == ["good", "bad", "good", "bad"]
    assert list(frame["route"]) == ["model", "heuristic", "model", "model"]
    assert list(frame["ts"]) == [1.0, 2.0, 3.0, 4.0]
    assert frame["age"].tolist()[:2] == [30, 41] and frame["age"].isna().tolist()[2]
    assert frame["income"].isna().tolist() == [True, False, True, False]
    assert frame["income"][1] == 90.5
    assert not list(tmp_path.glob("out/*.partial"))

    assert export_labelled(store, path, limit=2) == 2
    newest = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    assert list(newest["request_id"]) == ["e2", "e3"]
    assert export_labelled(store, path, since_ts=3.5) == 1
    if suffix == ".csv.gz":
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip's magic number: compressed as named


def test_a_field_hashed_from_some_day_on_still_exports_to_parquet(store: PredictionStore, tmp_path: Path) -> None:
    """store.redact turned on by a reload: the field holds raw values in older rows and digests
    in newer ones. Parquet takes one type a column: the column is written as text."""
    store.write([record("h0", ts=1.0, inputs={"age": 30, "email": 17}),
                 record("h1", ts=2.0, inputs={"age": 41.5, "email": "sha256:ab12"})])
    for request_id in ("h0", "h1"):
        store.add_outcome(request_id, "good", 10.0, pending_ok=False)
    path = tmp_path / "labelled.parquet"
    assert export_labelled(store, path) == 2
    frame = pd.read_parquet(path)
    assert frame["email"].tolist() == ["17", "sha256:ab12"]
    assert frame["age"].tolist() == [30.0, 41.5]  # numbers stay numbers


# -- a store that goes away ----------------------------------------------------------------


def test_cut_store_fails_fast_and_the_next_call_reconnects(postgres_url: str) -> None:
    with TcpProxy(*server_address()) as proxy, \
            open_store(via_port(postgres_url, proxy.port), APP) as store:
        store.write([record("before")])
        connections = proxy.accepted
        proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            store.write([record("during")])  # the open connection was closed under it
        with pytest.raises(psycopg.OperationalError):
            store.write([record("during")])  # a new connection is refused: fails, no hang
        assert store.ping() is False
        proxy.restore()
        store.write([record("after")])
        assert proxy.accepted > connections + 1  # a new connection, not the cut one
        assert store.ping() is True
    with open_store(postgres_url, APP) as direct:
        assert [direct.get(i) is not None for i in ("before", "during", "after")] == [
            True, False, True]


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_fails_on_the_connect_timeout(postgres_url: str) -> None:
    """A TCP peer that accepts and stays silent: without connect_timeout this call hangs."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens; never accepts or answers
        url = via_port(postgres_url, silent.getsockname()[1])
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            open_store(url, APP)
