"""The operator's routing override in the store, shared by every instance of a plug-in.

One row per plug-in in `mlguard_routing` (the override in force) and one row per change in
`mlguard_routing_history` (who, from where, when, why). A change writes both in one transaction;
on PostgreSQL the same transaction sends `NOTIFY mlguard_routing, '<app>'`, delivered to every
listening instance when it commits, so nobody hears of a change that was rolled back.

    store = open_routing(url, "spam_filter")
    store.set("fallback", actor="alice", source="10.0.0.7", reason="bad release")
    store.current()          # RoutingEntry(mode="fallback", ...)
    store.history(limit=10)  # newest first

An instance follows changes on a `RoutingStore(ListeningDatabase(url), app)`: one connection
that reads the override and waits for the next NOTIFY (service/worker/fleet_admin.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Self

from service.store import schema
from service.store.database import Cursor, PostgresDatabase, connect
from service.store.urls import POSTGRESQL, parse_store_url

CHANNEL = "mlguard_routing"  # the NOTIFY channel; the payload is the plug-in's name
# Two changes of one plug-in never share a time (the history's key): a clock that reads the
# same or an earlier time than the last change moves on by this much.
TIME_STEP_S = 1e-6
COLUMNS = "mode, actor, source, reason, changed_at"


@dataclass(frozen=True, slots=True)
class RoutingEntry:
    """One override: the mode set, by whom (`actor`, as given), from where (`source`, the
    caller's address), why, and when (epoch seconds)."""

    mode: str
    actor: str | None
    source: str | None
    reason: str | None
    changed_at: float


def _entry(row: tuple[Any, ...]) -> RoutingEntry:
    return RoutingEntry(row[0], row[1], row[2], row[3], float(row[4]))


class RoutingStore(schema.MigratedStore):
    """The override of one plug-in (`app`) in a SQLite or PostgreSQL database.

    Uses the store's own connection handling (one connection, one transaction at a time, a
    dropped connection reopened by the next call) and migrates the schema on its first
    connection, like `PredictionStore`. Every method raises on a store error.
    """

    def current(self) -> RoutingEntry | None:
        """The override in force, or None when none was ever set."""
        with self.db.transaction(write=False) as cur:
            row = cur.execute(
                f"SELECT {COLUMNS} FROM mlguard_routing WHERE app = ?", (self.app,)
            ).fetchone()
        return None if row is None else _entry(row)

    def set(
        self,
        mode: str,
        *,
        actor: str | None,
        source: str | None,
        reason: str | None,
        now: float | None = None,
    ) -> RoutingEntry:
        """Put `mode` in force and record the change, in one transaction (with the NOTIFY on
        PostgreSQL); returns the entry as stored."""
        with self.db.transaction() as cur:
            changed_at = self._next_time(cur, time.time() if now is None else now)
            entry = RoutingEntry(mode, actor, source, reason, changed_at)
            values = (self.app, mode, actor, source, reason, changed_at)
            cur.execute(
                f"INSERT INTO mlguard_routing (app, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (app) DO UPDATE SET mode = excluded.mode, actor = excluded.actor, "
                "source = excluded.source, reason = excluded.reason, "
                "changed_at = excluded.changed_at",
                values,
            )
            cur.execute(
                f"INSERT INTO mlguard_routing_history (app, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
            if self.db.dialect == POSTGRESQL:
                cur.execute("SELECT pg_notify(?, ?)", (CHANNEL, self.app))
        return entry

    def _next_time(self, cur: Cursor, now: float) -> float:
        """`now`, or just after the override in force if the clock is behind it. On PostgreSQL
        its row is locked, so two instances changing it at once take turns (on SQLite, BEGIN
        IMMEDIATE already serialises writers)."""
        lock = " FOR UPDATE" if self.db.dialect == POSTGRESQL else ""
        row = cur.execute(
            f"SELECT changed_at FROM mlguard_routing WHERE app = ?{lock}", (self.app,)
        ).fetchone()
        return now if row is None or now > float(row[0]) else float(row[0]) + TIME_STEP_S

    def history(self, limit: int = 100) -> list[RoutingEntry]:
        """The recorded changes, newest first, at most `limit`."""
        with self.db.transaction(write=False) as cur:
            rows = cur.execute(
                f"SELECT {COLUMNS} FROM mlguard_routing_history WHERE app = ? "
                "ORDER BY changed_at DESC LIMIT ?",
                (self.app, int(limit)),
            ).fetchall()
        return [_entry(r) for r in rows]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ListeningDatabase(PostgresDatabase):
    """A PostgreSQL connection that LISTENs on `CHANNEL` from every (re)connection on.

    `wait(timeout_s)` blocks until a notification arrives or the time is up. Notifications that
    arrive while a query runs are kept by psycopg and returned by the next `wait`. A connection
    lost while waiting is dropped (the next call reconnects and listens again) and the error
    raised: the caller re-reads what it may have missed.
    """

    def _open(self) -> Any:
        conn = super()._open()
        conn.execute(f"LISTEN {CHANNEL}")
        conn.commit()  # LISTEN takes effect when its transaction commits
        return conn

    def wait(self, timeout_s: float) -> list[str]:
        """The payloads notified within `timeout_s` (returns at the first batch)."""
        with self._lock:
            conn = self._connection()
            try:
                return [n.payload for n in conn.notifies(timeout=timeout_s, stop_after=1)]
            except BaseException:
                self._drop()
                raise


def open_routing(url: str, app: str) -> RoutingStore:
    """The override of `app` in the store at `url`; nothing is opened until the first call."""
    return RoutingStore(connect(parse_store_url(url)), app)
