"""One database connection per store object, for SQLite or PostgreSQL, behind one lock.

The store's SQL is written once, with `?` placeholders; the PostgreSQL side turns them into
psycopg's `%s`. A failed connection is dropped and the next call opens a new one, so a store that
went away and came back needs no restart.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.store.urls import POSTGRESQL, SQLITE, StoreUrl

CONNECT_TIMEOUT_S = 2  # a dead PostgreSQL server fails a call in seconds, not minutes
SQLITE_BUSY_TIMEOUT_S = 10.0  # several worker processes write one file: wait for the lock

Params = Sequence[Any]


class Cursor:
    """The part of a DB-API cursor the store uses, with `?` placeholders on both databases."""

    def __init__(self, raw: Any, convert: Callable[[str], str]) -> None:
        self._raw = raw
        self._convert = convert

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        self._raw.execute(self._convert(sql), params)
        return self

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._raw.executemany(self._convert(sql), rows)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._raw.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._raw.fetchall()

    @property
    def rowcount(self) -> int:
        return self._raw.rowcount


class Database:
    """A lazily opened connection, shared by the store's threads one transaction at a time.

    `on_connect` runs inside the lock on every new connection, before the first transaction
    (the store checks and migrates the schema there).
    """

    dialect: str = ""

    def __init__(self, url: StoreUrl, durable: bool = True) -> None:
        self.url = url
        # Durable: a commit survives a power cut (SQLite fsyncs it). Not durable: it survives the
        # process being killed, not the machine losing power (what the prediction log accepts).
        self.durable = durable
        # Re-entrant: `on_connect` opens its own transactions while the lock is held.
        self._lock = threading.RLock()
        self._conn: Any = None
        self.on_connect: Callable[[Database], None] | None = None

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Cursor]:
        """One transaction: committed when the block ends, rolled back if it raises.

        `write=True` takes the write lock up front on SQLite (BEGIN IMMEDIATE), so two processes
        never deadlock upgrading a read to a write.
        """
        with self._lock:
            conn = self._connection()
            try:
                cursor = self._begin(conn, write)
                yield cursor
                conn.commit()
            except BaseException:
                self._abort(conn)
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self._open()
            self._conn = conn
            if self.on_connect is not None:
                try:
                    self.on_connect(self)
                except BaseException:
                    self._drop()
                    raise
        return self._conn

    def _abort(self, conn: Any) -> None:
        """Roll back; a connection that cannot even roll back is dropped for a fresh one."""
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001 -- whatever broke it, this connection is done
            self._drop()
            return
        if self._broken(conn):
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close: gone anyway
                conn.close()

    def _open(self) -> Any:
        raise NotImplementedError

    def _begin(self, conn: Any, write: bool) -> Cursor:
        raise NotImplementedError

    def _broken(self, conn: Any) -> bool:
        return False


class SqliteDatabase(Database):
    """A SQLite file in WAL mode: readers never wait for the writer, writers queue on a lock."""

    dialect = SQLITE

    def _open(self) -> sqlite3.Connection:
        path = Path(self.url.target)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the transactions are ours (BEGIN IMMEDIATE), not the module's.
        conn = sqlite3.connect(
            path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        _switch_to_wal(conn)
        conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # FULL: an acknowledged outcome survives a power cut, not only a crashed process, at one
        # fsync per transaction. The prediction log's writer uses NORMAL (in WAL mode: fsync only
        # at checkpoints): under load the per-flush fsyncs cost serving ~12% of its throughput
        # here (docs/PERFORMANCE.md), and a log row is already at risk in a worker's buffer.
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        return conn

    def _begin(self, conn: sqlite3.Connection, write: bool) -> Cursor:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        return Cursor(conn.cursor(), lambda sql: sql)


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """`PRAGMA journal_mode=WAL`, retried while another connection holds the lock it needs.

    On a new file the switch takes an exclusive lock, and SQLite answers "database is locked" at
    once, without waiting on the busy timeout, when another connection is switching at the same
    moment (measured: 12 of 150 starts of four stores at once failed).
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class PostgresDatabase(Database):
    """psycopg 3, one connection; `?` placeholders become `%s`."""

    dialect = POSTGRESQL

    def _open(self) -> Any:
        import psycopg  # only deployments on PostgreSQL pay for the import
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(self.url.target)
        options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
        # Keepalives notice a peer that vanished without closing the connection.
        options.update(keepalives=1, keepalives_idle=10, keepalives_interval=2, keepalives_count=3)
        options.update({k: v for k, v in given.items() if k in options})  # the URL's own win
        return psycopg.connect(self.url.target, autocommit=False, **options)

    def _begin(self, conn: Any, write: bool) -> Cursor:
        return Cursor(conn.cursor(), lambda sql: sql.replace("?", "%s"))

    def _broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)


def connect(url: StoreUrl, durable: bool = True) -> Database:
    """The database object for a URL; nothing is opened until the first transaction. PostgreSQL
    commits are durable whatever `durable` says (synchronous_commit is the server's)."""
    return SqliteDatabase(url, durable) if url.dialect == SQLITE else PostgresDatabase(url, durable)
