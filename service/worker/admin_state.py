"""The operator's routing override, persisted so that every worker and the next start see it.

One small JSON file under `admin.state_dir`: the worker that takes the POST writes it atomically
(temp file + rename) and applies it at once; the other workers pick it up on their next config
poll (ConfigStore.watch), so a change reaches all of them within `reload.interval_s`.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from service.worker.config import PROJECT_ROOT
from service.worker.config_store import WatchedFile, write_json_atomically

log = logging.getLogger("mlguard.admin")

ROUTING_FILE = "routing.json"
MODES = ("auto", "fallback")


@dataclass(frozen=True)
class AdminRouting:
    mode: str | None = None  # None: no override was ever set
    changed_by: str | None = None  # the client address of the change
    changed_at: float | None = None  # unix time


def state_dir_path(configured: str) -> Path:
    path = Path(configured)
    return path if path.is_absolute() else PROJECT_ROOT / path


class AdminStateStore:
    def __init__(
        self, state_dir: Path, on_change: Callable[[AdminRouting], None] = lambda state: None
    ) -> None:
        self.path = state_dir / ROUTING_FILE
        self.current = AdminRouting()
        self._on_change = on_change
        self._lock = threading.Lock()  # writes come from the event loop, reads from the watcher
        self.watched = WatchedFile(self.path, self._load)

    def set_mode(self, mode: str, source: str) -> AdminRouting:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        new = AdminRouting(mode=mode, changed_by=source, changed_at=time.time())
        with self._lock:
            old = self.current
            write_json_atomically(self.path, asdict(new))
            self.current = new
        log.warning("admin routing override %s -> %s by %s", old.mode, mode, source)
        self._on_change(new)
        return new

    def _load(self, text: str | None) -> None:
        try:
            state = AdminRouting() if text is None else AdminRouting(**json.loads(text))
            if state.mode not in (None, *MODES):
                raise ValueError(f"mode {state.mode!r}")
        except (ValueError, TypeError) as exc:  # a hand edit gone wrong: keep the last good one
            log.error("admin state file %s invalid, keeping mode %s: %s", self.path, self.current.mode, exc)
            return
        with self._lock:
            changed = state != self.current
            if changed:
                log.info("admin routing override now %s (set by %s)", state.mode, state.changed_by)
                self.current = state
        if changed:
            self._on_change(state)
