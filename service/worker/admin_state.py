"""The operator's routing override, persisted so that every worker and the next start see it.

Two homes, one interface (`AdminState`), chosen by `open_admin_state` from `store.url`:

- **PostgreSQL store** (several instances): the override lives in the store and every instance
  follows it (service/worker/fleet_admin.py). No file is written or read.
- **Otherwise** (one instance): one small JSON file under `admin.state_dir/<app>/`: the worker
  that takes the POST writes it atomically (temp file + rename) and applies it at once; the other
  workers pick it up on their next config poll (ConfigStore.watch), so a change reaches all of
  them within `reload.interval_s`. The file also keeps the last `FILE_HISTORY` changes, for
  GET /admin/routing/history: a few KB, rewritten only when an operator changes the mode.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from service.store.routing import RoutingEntry
from service.store.urls import POSTGRESQL, parse_store_url
from service.worker.config import PROJECT_ROOT
from service.worker.config_store import WatchedFile, file_lock, write_json_atomically

log = logging.getLogger("mlguard.admin")

ROUTING_FILE = "routing.json"
MODES = ("auto", "fallback")
FILE_HISTORY = 100  # changes kept in the file; the shared store keeps them all

OnChange = Callable[["AdminRouting"], None]
Watch = Callable[[WatchedFile], None]  # ConfigStore.watch


@dataclass(frozen=True)
class AdminRouting:
    mode: str | None = None  # None: no override was ever set
    changed_by: str | None = None  # the client address of the change
    changed_at: float | None = None  # unix time
    actor: str | None = None  # who, as the operator said (the request's `actor`)
    reason: str | None = None  # why, as the operator said


class AdminStateUnavailable(RuntimeError):
    """The override could not be changed or read because its store is unreachable."""


class AdminState(Protocol):
    """Where the override lives. `current` is read on every request: a plain attribute."""

    current: AdminRouting

    def follow(self, watch: Watch) -> None:
        """Start following changes made elsewhere (other workers, other instances); returns once
        the override in force is known, or its store failed to answer in time."""

    def set_mode(
        self, mode: str, source: str, actor: str | None = None, reason: str | None = None
    ) -> AdminRouting:
        """Put `mode` in force and record who (`actor`, `source`), why and when. Raises
        ValueError for an unknown mode, AdminStateUnavailable when it cannot be saved."""

    def history(self, limit: int = 100) -> list[RoutingEntry]:
        """The recorded changes, newest first."""

    def stop(self) -> None:
        """Stop following; the caller owns what `follow` started."""


def state_dir_path(configured: str) -> Path:
    path = Path(configured)
    return path if path.is_absolute() else PROJECT_ROOT / path


def open_admin_state(
    store_url: str, state_dir: Path, app: str, on_change: OnChange = lambda state: None
) -> AdminState:
    """The shared override with a PostgreSQL `store_url`, else the file in `state_dir`.

    Nothing is read before `follow`. `on_change` is called (from the following thread) with
    each override set elsewhere.
    """
    if store_url and parse_store_url(store_url).dialect == POSTGRESQL:
        from service.worker.fleet_admin import FleetAdminState  # only fleets load psycopg

        return FleetAdminState(store_url, app, on_change)
    return AdminStateStore(state_dir, on_change)


def log_change(old: str | None, new: AdminRouting) -> None:
    """The WARNING every change leaves in the log of the worker that made it."""
    said = ", ".join(f"{k} {v!r}" for k, v in (("actor", new.actor), ("reason", new.reason)) if v)
    log.warning("admin routing override %s -> %s by %s%s", old, new.mode, new.changed_by,
                f" ({said})" if said else "")


class AdminStateStore:
    """The override in `state_dir/routing.json`, shared by the workers of one instance."""

    def __init__(self, state_dir: Path, on_change: OnChange = lambda state: None) -> None:
        self.path = state_dir / ROUTING_FILE
        self.current = AdminRouting()
        self._on_change = on_change
        self._lock = threading.Lock()  # writes come from the event loop, reads from the watcher
        self.watched = WatchedFile(self.path, self._load)

    def follow(self, watch: Watch) -> None:
        watch(self.watched)  # read now, then on every config poll

    def stop(self) -> None:
        """Nothing of its own to stop: the config watcher polls the file."""

    def set_mode(
        self, mode: str, source: str, actor: str | None = None, reason: str | None = None
    ) -> AdminRouting:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        new = AdminRouting(mode, source, time.time(), actor, reason)
        entry = RoutingEntry(mode, actor, source, reason, new.changed_at)
        with self._lock:
            old = self.current
            try:
                with file_lock(self.path):  # the history is read, extended and rewritten
                    kept = self._file_history()[: FILE_HISTORY - 1]
                    write_json_atomically(
                        self.path, {**asdict(new), "history": [asdict(entry), *map(asdict, kept)]}
                    )
            except OSError as exc:  # a full or read-only volume: nothing changed
                raise AdminStateUnavailable(f"{self.path} not written: {exc}") from exc
            self.current = new
        log_change(old.mode, new)
        self._on_change(new)
        return new

    def history(self, limit: int = 100) -> list[RoutingEntry]:
        return self._file_history()[:limit]

    def _file_history(self) -> list[RoutingEntry]:
        """The changes kept in the file, newest first; [] without a readable file."""
        try:
            items = json.loads(self.path.read_text()).get("history", [])
            return [RoutingEntry(**item) for item in items]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # a hand edit gone wrong
            log.error("admin state file %s: history unreadable, starting a new one: %s",
                      self.path, exc)
            return []

    def _load(self, polled: str | None) -> None:
        """The watcher saw the file change. It is read again here, under the lock `set_mode`
        writes under: text the watcher read just before a change made in this worker would
        otherwise undo that change until the next poll."""
        with self._lock:
            try:
                text: str | None = self.path.read_text()
            except FileNotFoundError:
                text = None
            except OSError:  # unreadable a moment after the watcher read it: take its text
                text = polled
            try:
                state = AdminRouting() if text is None else _state_of(json.loads(text))
                if state.mode not in (None, *MODES):
                    raise ValueError(f"mode {state.mode!r}")
            except (ValueError, TypeError, AttributeError) as exc:  # a hand edit gone wrong
                log.error("admin state file %s invalid, keeping mode %s: %s", self.path,
                          self.current.mode, exc)
                return
            changed = state != self.current
            if changed:
                log.info("admin routing override now %s (set by %s)", state.mode, state.changed_by)
                self.current = state
        if changed:
            self._on_change(state)


def _state_of(data: dict[str, Any]) -> AdminRouting:
    """The override a file holds; files written before `actor` and `reason` existed load too."""
    return AdminRouting(**{k: v for k, v in data.items() if k != "history"})
