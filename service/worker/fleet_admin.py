"""The operator's override shared by every instance of a plug-in through PostgreSQL.

With a PostgreSQL `store.url`, the override lives in the store (service/store/routing.py), not in
a per-instance file. Each worker:

- reads it before it serves (`follow` waits up to `first_read_s`, 2 s): a worker started while
  an override is in force never answers its first request with a stale "auto" while the store
  answers. A store that does not answer in time does not keep the worker from starting: it
  starts without an override and applies the store's as soon as it answers.
- follows changes by LISTEN/NOTIFY on one dedicated connection (a change reaches every instance
  in milliseconds), and re-reads every `poll_s` (1 s) on that same connection as the safety net
  (a notification lost with a connection, a row edited by hand).
- keeps its last known override while the store is unreachable, retries every `retry_s`, and
  re-reads as soon as it reconnects (whatever was missed meanwhile).

A change (`set_mode`) is written through a second connection, opened for the call and closed
after it (operators change the mode rarely): it commits the override, its history row and the
NOTIFY in one transaction, then applies at once in this worker. With the store unreachable it
raises AdminStateUnavailable and nothing changes anywhere: an override this instance alone
followed would split the fleet.
"""
from __future__ import annotations

import logging
import threading

from service.store.routing import ListeningDatabase, RoutingEntry, RoutingStore, open_routing
from service.store.urls import parse_store_url
from service.worker.admin_state import (
    MODES,
    AdminRouting,
    AdminStateUnavailable,
    OnChange,
    Watch,
    log_change,
)

log = logging.getLogger("mlguard.admin")


def routing_of(entry: RoutingEntry | None) -> AdminRouting:
    """The override a stored entry puts in force (no entry: none)."""
    if entry is None:
        return AdminRouting()
    return AdminRouting(entry.mode, entry.source, entry.changed_at, entry.actor, entry.reason)


class FleetAdminState:
    """The `AdminState` of a fleet: the override in the shared store, followed by a thread.

    `store_up` says whether the last read of the store succeeded (None before the first).
    """

    def __init__(
        self,
        url: str,
        app: str,
        on_change: OnChange = lambda state: None,
        *,
        poll_s: float = 1.0,
        retry_s: float = 1.0,
        first_read_s: float = 2.0,
    ) -> None:
        self.app = app
        self.current = AdminRouting()
        self.store_up: bool | None = None
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.first_read_s = first_read_s
        self._on_change = on_change
        self._writes = open_routing(url, app)
        self._listening = ListeningDatabase(parse_store_url(url))  # reads, and waits for NOTIFY
        self._reads = RoutingStore(self._listening, app)
        self._lock = threading.Lock()  # `current` is set by the request path and the follower
        self._local_changes = 0  # set_mode calls so far: a read older than one is not applied
        self._refused: AdminRouting | None = None  # the last invalid override read, logged once
        self._first_read = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- following ----------------------------------------------------------------------

    def follow(self, watch: Watch) -> None:
        """Start the follower thread and wait (up to `first_read_s`) for its first read.
        `watch` is not used: nothing here is a file."""
        if self._thread is not None:
            raise RuntimeError("already following")
        self._thread = threading.Thread(target=self._run, name="mlguard-fleet-admin", daemon=True)
        self._thread.start()
        if not self._first_read.wait(self.first_read_s) or not self.store_up:
            log.warning("admin routing: the shared store did not answer within %.1f s; serving "
                        "without its override until it does", self.first_read_s)

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)  # it wakes within poll_s, or when a hung call gives up
            if thread.is_alive():
                log.warning("admin routing follower still waiting on the store after %.1f s; "
                            "left to end with the process", timeout_s)
                return
        self._reads.close()
        self._writes.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._refresh()
                self._set_up(True, None)
                self._first_read.set()
                # Any notification wakes it, another plug-in's too: one read by key, harmless.
                self._listening.wait(self.poll_s)
            except Exception as exc:  # noqa: BLE001 -- any store failure: keep the last override
                self._set_up(False, exc)
                self._first_read.set()
                self._stopping.wait(self.retry_s)

    def _refresh(self) -> None:
        """Read the override in force and apply it if it changed."""
        with self._lock:
            seen = self._local_changes
        state = routing_of(self._reads.current())
        if state.mode not in (None, *MODES):  # a hand edit of the table gone wrong
            if state != self._refused:  # once, not at every poll
                log.error("admin routing: the store holds mode %r, keeping %s", state.mode,
                          self.current.mode)
                self._refused = state
            return
        with self._lock:
            # A change made here since the read began: the read may predate it; its NOTIFY
            # wakes the next read.
            if seen != self._local_changes or state == self.current:
                return
            self.current = state
        log.info("admin routing override now %s (set by %s, actor %r)", state.mode,
                 state.changed_by, state.actor)
        self._notify(state)

    def _set_up(self, up: bool, exc: Exception | None) -> None:
        was, self.store_up = self.store_up, up
        if up and was is False:
            log.warning("admin routing: the shared store answers again; following it")
        elif not up and was is not False:  # once per outage: the retries would flood the log
            log.warning("admin routing: the shared store is unreachable, keeping mode %s: %s",
                        self.current.mode, exc)

    def _notify(self, state: AdminRouting) -> None:
        try:
            self._on_change(state)
        except Exception:  # a listener's bug must not look like a store outage
            log.exception("admin routing listener failed")

    # -- the operator's calls (from the API's thread pool) ------------------------------

    def set_mode(
        self, mode: str, source: str, actor: str | None = None, reason: str | None = None
    ) -> AdminRouting:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        try:
            entry = self._writes.set(mode, actor=actor, source=source, reason=reason)
        except Exception as exc:
            raise AdminStateUnavailable(f"the shared store did not confirm the change: {exc}") from exc
        finally:
            self._writes.close()  # rare calls: no connection held between them
        new = routing_of(entry)
        with self._lock:
            old, self.current = self.current, new
            self._local_changes += 1
        log_change(old.mode, new)
        self._notify(new)
        return new

    def history(self, limit: int = 100) -> list[RoutingEntry]:
        try:
            return self._writes.history(limit)
        except Exception as exc:
            raise AdminStateUnavailable(f"the shared store did not answer: {exc}") from exc
        finally:
            self._writes.close()
