"""The prediction store: the durable log of answered predictions and the outcomes posted later.

Every method commits before it returns and raises on a store error; the caller decides what a
failure means (the write-behind log retries, the feedback endpoint answers 503).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any, Self

from pydantic_core import to_json

from service.store import schema
from service.store.database import Cursor, connect
from service.store.records import (
    FeedbackResult,
    LabelledRow,
    Outcome,
    OutcomeValue,
    PredictionRecord,
)
from service.store.urls import parse_store_url

PREDICTION_COLUMNS = (
    "request_id", "app", "ts", "model_version", "route", "cause", "reasons", "inputs",
    "model_output", "rules_output", "answer", "client",
)
# Rows per INSERT statement: one statement for many rows costs one round trip (PostgreSQL) and
# one release of the GIL (SQLite) instead of one per row, which under load took CPU from serving.
# 12 columns x 400 rows stays under both databases' limits on bound parameters.
INSERT_ROWS = 400
_ROW = f"({', '.join('?' * len(PREDICTION_COLUMNS))})"


@functools.lru_cache(maxsize=16)
def insert_predictions(rows: int) -> str:
    """One INSERT of `rows` predictions; a retried batch lands once and does not fail."""
    return (
        f"INSERT INTO mlguard_predictions ({', '.join(PREDICTION_COLUMNS)}) "
        f"VALUES {', '.join([_ROW] * rows)} ON CONFLICT (request_id) DO NOTHING"
    )
SELECT_PREDICTION = (
    f"SELECT {', '.join('p.' + c for c in PREDICTION_COLUMNS)}, o.outcome, o.received_at "
    "FROM mlguard_predictions p LEFT JOIN mlguard_outcomes o "
    "ON o.request_id = p.request_id AND o.app = p.app "
    "WHERE p.request_id = ? AND p.app = ?"
)
JSON_COLUMNS = ("reasons", "inputs", "model_output", "rules_output", "answer")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dump(value: Any) -> str | None:
    # pydantic-core's encoder (pydantic is a dependency already): ~6x faster than the standard
    # library's on the log's small rows, whose encoding was the larger part of a write's CPU.
    # The same text for these values (NaN included).
    return None if value is None else to_json(value, fallback=_plain).decode()


def load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class PredictionStore(schema.MigratedStore):
    """The prediction log and outcomes of one plug-in (`app`) in a SQLite or PostgreSQL database.

    Thread-safe: one connection, one transaction at a time. Open it with `open_store`.
    """

    # -- the prediction log --------------------------------------------------------------

    def write(self, records: Sequence[PredictionRecord]) -> None:
        """Insert records in one transaction; ids already stored are skipped."""
        if not records:
            return
        rows = [
            (
                r.request_id, r.app, float(r.ts), r.model_version, r.route, r.cause,
                dump(list(r.reasons)), dump(r.inputs), dump(r.model_output),
                dump(r.rules_output), dump(r.answer), r.client,
            )
            for r in records
        ]
        with self.db.transaction() as cur:
            for start in range(0, len(rows), INSERT_ROWS):
                chunk = rows[start : start + INSERT_ROWS]
                cur.execute(insert_predictions(len(chunk)), [v for row in chunk for v in row])

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The prediction (every PredictionRecord field) with `outcome` and `outcome_received_at`
        (None while unlabelled), or None when this plug-in never logged the id."""
        with self.db.transaction(write=False) as cur:
            row = cur.execute(SELECT_PREDICTION, (request_id, self.app)).fetchone()
        if row is None:
            return None
        record = dict(zip(PREDICTION_COLUMNS, row[: len(PREDICTION_COLUMNS)], strict=True))
        for column in JSON_COLUMNS:
            record[column] = load(record[column])
        record["outcome"] = load(row[-2])
        record["outcome_received_at"] = row[-1]
        return record

    def delete(self, request_id: str) -> bool:
        """Erase a prediction and its outcome (privacy); True when anything was deleted."""
        with self.db.transaction() as cur:
            predictions = cur.execute(
                "DELETE FROM mlguard_predictions WHERE request_id = ? AND app = ?",
                (request_id, self.app),
            ).rowcount
            outcomes = cur.execute(
                "DELETE FROM mlguard_outcomes WHERE request_id = ? AND app = ?",
                (request_id, self.app),
            ).rowcount
        return predictions + outcomes > 0

    def purge(self, before_ts: float, orphan_before_ts: float) -> tuple[int, int]:
        """Retention: delete predictions older than `before_ts` with their outcomes, and outcomes
        whose prediction never landed, received before `orphan_before_ts`.

        Returns (predictions deleted, orphan outcomes deleted).
        """
        with self.db.transaction() as cur:
            cur.execute(
                "DELETE FROM mlguard_outcomes WHERE app = ? AND request_id IN "
                "(SELECT request_id FROM mlguard_predictions WHERE app = ? AND ts < ?)",
                (self.app, self.app, before_ts),
            )
            predictions = cur.execute(
                "DELETE FROM mlguard_predictions WHERE app = ? AND ts < ?", (self.app, before_ts)
            ).rowcount
            orphans = cur.execute(
                "DELETE FROM mlguard_outcomes WHERE app = ? AND received_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM mlguard_predictions p "
                "WHERE p.request_id = mlguard_outcomes.request_id)",
                (self.app, orphan_before_ts),
            ).rowcount
        return predictions, orphans

    # -- outcomes ------------------------------------------------------------------------

    def add_outcome(
        self, request_id: str, outcome: OutcomeValue, received_at: float, pending_ok: bool
    ) -> FeedbackResult:
        """Attach the true outcome to a logged prediction; committed before it returns."""
        with self.db.transaction() as cur:
            return self._add_outcome(cur, Outcome(request_id, outcome, received_at, pending_ok))

    def add_outcomes(self, outcomes: Sequence[Outcome]) -> list[FeedbackResult]:
        """Several outcomes in one transaction; one result each, in order."""
        with self.db.transaction() as cur:
            return [self._add_outcome(cur, o) for o in outcomes]

    def _add_outcome(self, cur: Cursor, item: Outcome) -> FeedbackResult:
        owner = cur.execute(
            "SELECT app FROM mlguard_predictions WHERE request_id = ?", (item.request_id,)
        ).fetchone()
        logged = owner is not None and owner[0] == self.app
        # Another plug-in's id (several can share a database) was never issued by this one: kept
        # as pending, its outcome would hold that id and never join either prediction.
        if not logged and (owner is not None or not item.pending_ok):
            return FeedbackResult.UNKNOWN
        # Insert-then-read-back, never read-then-insert: of two concurrent posts for one id the
        # database lets exactly one insert land; the other reads what it wrote.
        inserted = cur.execute(
            "INSERT INTO mlguard_outcomes (request_id, app, outcome, received_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
            (item.request_id, self.app, dump(item.outcome), float(item.received_at)),
        ).rowcount
        if inserted:
            return FeedbackResult.RECORDED if logged else FeedbackResult.PENDING
        row = cur.execute(
            "SELECT outcome FROM mlguard_outcomes WHERE request_id = ?", (item.request_id,)
        ).fetchone()
        same = row is not None and load(row[0]) == item.outcome
        return FeedbackResult.DUPLICATE if same else FeedbackResult.CONFLICT

    # -- reading the labelled window -----------------------------------------------------

    def labelled(
        self, limit: int | None, since_ts: float, with_inputs: bool = False
    ) -> list[LabelledRow]:
        """The most recent `limit` (None: all) labelled predictions with ts >= since_ts,
        newest first. `inputs` is read only when `with_inputs` (exports)."""
        inputs = "p.inputs" if with_inputs else "NULL"
        sql = (
            "SELECT p.request_id, p.ts, p.route, p.model_version, p.model_output, "
            f"p.rules_output, p.answer, o.outcome, o.received_at, {inputs} "
            "FROM mlguard_predictions p JOIN mlguard_outcomes o "
            "ON o.request_id = p.request_id AND o.app = p.app "
            "WHERE p.app = ? AND p.ts >= ? ORDER BY p.ts DESC, p.request_id DESC"
        )
        params: tuple[Any, ...] = (self.app, since_ts)
        if limit is not None:
            sql += " LIMIT ?"
            params += (int(limit),)
        with self.db.transaction(write=False) as cur:
            rows = cur.execute(sql, params).fetchall()
        return [
            LabelledRow(
                request_id=r[0], ts=r[1], route=r[2], model_version=r[3],
                model_output=load(r[4]), rules_output=load(r[5]), answer=load(r[6]),
                outcome=load(r[7]), received_at=r[8], inputs=load(r[9]),
            )
            for r in rows
        ]

    def window_counts(self, since_ts: float) -> tuple[int, int]:
        """(predictions, labelled predictions) with ts >= since_ts: the label coverage."""
        with self.db.transaction(write=False) as cur:
            row = cur.execute(
                "SELECT COUNT(*), COUNT(o.request_id) FROM mlguard_predictions p "
                "LEFT JOIN mlguard_outcomes o ON o.request_id = p.request_id AND o.app = p.app "
                "WHERE p.app = ? AND p.ts >= ?",
                (self.app, since_ts),
            ).fetchone()
        assert row is not None  # an aggregate always returns one row
        return int(row[0]), int(row[1])

    # -- lifecycle -----------------------------------------------------------------------

    def ping(self) -> bool:
        """True when the database answers (reconnecting if needed); never raises."""
        try:
            with self.db.transaction(write=False) as cur:
                cur.execute("SELECT 1").fetchone()
        except Exception:  # noqa: BLE001 -- any failure means the store is not usable now
            return False
        return True

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(
    url: str,
    app: str,
    *,
    connect_now: bool = True,
    migrations: Sequence[schema.Migration] = schema.MIGRATIONS,
    durable: bool = True,
) -> PredictionStore:
    """The store at `url` (sqlite:///path.db, sqlite:////abs/path.db, postgresql://...) for `app`.

    With `connect_now` (the default) it connects and migrates the schema here, raising if the
    database is unreachable or newer than this mlguard (SchemaTooNewError). Without it, that
    happens on the first call, so a process can start while the store is down. `durable=False`
    (the prediction log's writer): on SQLite, commits survive a killed process but not a power
    cut; acknowledged outcomes always use a durable store.
    """
    store = PredictionStore(connect(parse_store_url(url), durable), app, migrations)
    if connect_now:
        with store.db.transaction(write=False):
            pass
    return store
