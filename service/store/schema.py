"""The store's schema, versioned: an ordered list of migrations applied once per database.

An upgrade of mlguard that changes the tables appends a migration here; `migrate` applies the
missing ones when a store connects, so no operator ever runs SQL by hand. Several worker
processes start at once, so the check-and-apply runs under a database-wide lock
(PostgreSQL: an advisory lock for the transaction; SQLite: BEGIN IMMEDIATE).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.store.database import Database
from service.store.urls import POSTGRESQL

VERSIONS_TABLE = "mlguard_schema_migrations"
# Any constant shared by every mlguard process: the advisory lock that serialises migrations.
ADVISORY_LOCK_KEY = 0x6D6C6775617264  # "mlguard"


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. Statements use the SQL both databases accept (TEXT, REAL/DOUBLE)."""

    version: int
    description: str
    statements: tuple[str, ...]


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer mlguard than this one: refuse rather than guess."""


# Times are epoch seconds; JSON is TEXT; every row carries its plug-in (`app`), so several
# plug-ins can share one database. Outcomes live apart from predictions: an outcome may arrive
# while its prediction is still in a worker's write buffer, and is joined when read.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "prediction log and outcomes",
        (
            """CREATE TABLE mlguard_predictions (
                request_id TEXT PRIMARY KEY,
                app TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                model_version TEXT NOT NULL,
                route TEXT NOT NULL,
                cause TEXT NOT NULL,
                reasons TEXT NOT NULL,
                inputs TEXT,
                model_output TEXT,
                rules_output TEXT,
                answer TEXT NOT NULL,
                client TEXT
            )""",
            "CREATE INDEX mlguard_predictions_app_ts ON mlguard_predictions (app, ts)",
            """CREATE TABLE mlguard_outcomes (
                request_id TEXT PRIMARY KEY,
                app TEXT NOT NULL,
                outcome TEXT NOT NULL,
                received_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX mlguard_outcomes_app_received ON mlguard_outcomes (app, received_at)",
        ),
    ),
    # What a fleet of instances shares besides the log: the operator's override (one row per
    # plug-in, service/store/routing.py) with every change kept, and the fleet's drift verdict
    # (one row per plug-in and kind of verdict, written by the instance that judges).
    Migration(
        2,
        "fleet state: routing override, its history, fleet verdicts",
        (
            """CREATE TABLE mlguard_routing (
                app TEXT PRIMARY KEY,
                mode TEXT NOT NULL,
                actor TEXT,
                source TEXT,
                reason TEXT,
                changed_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE mlguard_routing_history (
                app TEXT NOT NULL,
                changed_at DOUBLE PRECISION NOT NULL,
                mode TEXT NOT NULL,
                actor TEXT,
                source TEXT,
                reason TEXT,
                PRIMARY KEY (app, changed_at)
            )""",
            """CREATE TABLE mlguard_fleet_verdicts (
                app TEXT NOT NULL,
                kind TEXT NOT NULL,
                payload TEXT NOT NULL,
                judge TEXT NOT NULL,
                checked_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (app, kind)
            )""",
        ),
    ),
)


def latest_version(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    return migrations[-1].version if migrations else 0


def migrate(db: Database, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to the last migration; returns the schema version.

    Idempotent, and safe when several processes call it at once: one applies, the others wait
    for the lock and find nothing left to do. Raises SchemaTooNewError when the database is
    ahead of `migrations`.
    """
    if [m.version for m in migrations] != list(range(1, len(migrations) + 1)):
        raise ValueError("migrations must be numbered 1, 2, 3, ... in order")
    known = latest_version(migrations)
    with db.transaction(write=True) as cur:
        if db.dialect == POSTGRESQL:
            cur.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} ("
            "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        row = cur.execute(f"SELECT MAX(version) FROM {VERSIONS_TABLE}").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > known:
            raise SchemaTooNewError(
                f"the store at {db.url.display()} has schema version {current}, but this mlguard "
                f"knows versions up to {known}: upgrade mlguard, or point store.url elsewhere"
            )
        for migration in migrations[current:]:
            for statement in migration.statements:
                cur.execute(statement)
            cur.execute(
                f"INSERT INTO {VERSIONS_TABLE} (version, applied_at) VALUES (?, ?)",
                (migration.version, time.time()),
            )
    return known


class MigratedStore:
    """Base of the stores over one `Database` for one plug-in (`app`): the schema is brought up
    to date on the first connection (`migrate`), once per store object; a reconnect finds it in
    place."""

    def __init__(self, db: Database, app: str, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        self.db = db
        self.app = app
        self._migrations = migrations
        self._migrated = False
        db.on_connect = self._on_connect

    def _on_connect(self, db: Database) -> None:
        if not self._migrated:
            migrate(db, self._migrations)
            self._migrated = True


def schema_version(db: Database) -> int:
    """The version the database is at (0: never migrated)."""
    with db.transaction(write=False) as cur:
        if db.dialect == POSTGRESQL:
            exists = cur.execute("SELECT to_regclass(?)", (VERSIONS_TABLE,)).fetchone()
        else:
            exists = cur.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                (VERSIONS_TABLE,),
            ).fetchone()
        if not exists or exists[0] is None:
            return 0
        row = cur.execute(f"SELECT MAX(version) FROM {VERSIONS_TABLE}").fetchone()
        return int(row[0]) if row and row[0] is not None else 0
