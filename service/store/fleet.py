"""What the instances of one plug-in share to reach one drift verdict (PostgreSQL only).

- The judge's lease: a session-level PostgreSQL advisory lock, held on a connection of its own.
  Exactly one monitoring process holds it; when that process dies (even by SIGKILL), its
  connection closes and PostgreSQL releases the lock, so another instance takes over at its next
  attempt. A judge that cannot reach the server any more loses the lock with its connection.
- The fleet's window: the prediction log itself. Every instance already writes its served rows
  there, so the judge reads the newest ones of the version served: no second write path.
- The published verdicts (`mlguard_fleet_verdicts`): the judge writes each check's verdict,
  every instance reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from service.store.database import connect
from service.store.predictions import PredictionStore, load
from service.store.urls import parse_store_url


def judge_lock_key(app: str) -> int:
    """A signed 64-bit advisory lock key of its own per plug-in."""
    digest = hashlib.sha256(f"mlguard-judge:{app}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One served row of the fleet, as the drift window needs it."""

    request_id: str
    ts: float
    route: str
    inputs: dict[str, Any] | None
    model_output: dict[str, Any] | None
    rules_output: dict[str, Any] | None
    client: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    payload: dict[str, Any]
    judge: str
    checked_at: float


class FleetStore:
    """The lease, the fleet's rows and the verdicts of one plug-in. Every method raises when the
    store is unreachable; the caller falls back to judging its own instance's window."""

    def __init__(self, store: PredictionStore, url: str) -> None:
        self._store = store  # its connection runs the queries (and migrates the schema)
        self._lease = connect(parse_store_url(url))  # holds the advisory lock, nothing else
        self._key = judge_lock_key(store.app)
        self._leading = False
        self.identity = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def app(self) -> str:
        return self._store.app

    def lead(self) -> bool:
        """Hold or take the judge's lease; True while this process is the judge."""
        with self._lease.transaction(write=False) as cur:
            if self._leading:
                cur.execute("SELECT 1")  # raises if the connection, and with it the lock, is gone
                return True
            row = cur.execute("SELECT pg_try_advisory_lock(?)", (self._key,)).fetchone()
        self._leading = bool(row and row[0])
        return self._leading

    def resign(self) -> None:
        """Drop the lease (closing its connection releases the lock); also what a failed lease
        connection calls for, since the lock went with it."""
        self._leading = False
        self._lease.close()

    def recent_rows(self, version: str, since_ts: float, limit: int) -> list[FleetRow]:
        """The newest `limit` rows served by `version` with ts > since_ts, oldest first."""
        with self._store.db.transaction(write=False) as cur:
            rows = cur.execute(
                "SELECT request_id, ts, route, inputs, model_output, rules_output, client "
                "FROM mlguard_predictions WHERE app = ? AND model_version = ? AND ts > ? "
                "ORDER BY ts DESC LIMIT ?",
                (self.app, version, since_ts, int(limit)),
            ).fetchall()
        return [FleetRow(r[0], r[1], r[2], load(r[3]), load(r[4]), load(r[5]), r[6])
                for r in reversed(rows)]

    def publish(self, kind: str, payload: dict[str, Any], checked_at: float) -> None:
        with self._store.db.transaction() as cur:
            cur.execute(
                "INSERT INTO mlguard_fleet_verdicts (app, kind, payload, judge, checked_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (app, kind) DO UPDATE SET "
                "payload = EXCLUDED.payload, judge = EXCLUDED.judge, checked_at = EXCLUDED.checked_at",
                (self.app, kind, json.dumps(payload), self.identity, checked_at),
            )

    def verdict(self, kind: str) -> Verdict | None:
        with self._store.db.transaction(write=False) as cur:
            row = cur.execute(
                "SELECT payload, judge, checked_at FROM mlguard_fleet_verdicts WHERE app = ? AND kind = ?",
                (self.app, kind),
            ).fetchone()
        return None if row is None else Verdict(json.loads(row[0]), row[1], row[2])

    def close(self) -> None:
        self.resign()
