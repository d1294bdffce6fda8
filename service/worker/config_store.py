"""Hot reload: every worker polls the config file and swaps in a new snapshot when it changes.

Polling the file's content (not inotify, not mtime) is what survives Kubernetes' ConfigMap update,
an atomic swap of a symlinked directory that changes neither the path nor, reliably, the mtime.
A file of a few KB read once a second costs nothing measurable.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from monitors.periodic import PeriodicThread
from service.worker.config import ConfigError, Settings, parse

log = logging.getLogger("mlguard.config")

Listener = Callable[[Settings, Settings], None]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_json_atomically(path: Path, data: object) -> None:
    """Write a small state file that other workers poll: they see the old file or the new one,
    never half of one (temp file + rename in the same folder). Flushed to disk before the
    rename: after a power cut the file is the old one or the new one, never empty (an empty
    admin state would drop a forced fallback at the next start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold `path`'s lock file (`<name>.lock`, flock) exclusively: every worker process of this
    machine that reads, changes and rewrites the state file does so under it, or two workers
    writing at once would each drop the other's change. A thread lock does not reach the other
    processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class WatchedFile:
    """Another file the config watcher polls by content (e.g. the admin state): one thread for all.

    `on_change` gets the new text, or None when the file is absent; it is called once at watch().
    """

    def __init__(self, path: Path, on_change: Callable[[str | None], None]) -> None:
        self.path = path
        self._on_change = on_change
        self._seen: str | None = ""  # never a digest, so the first poll always reports

    def poll(self) -> bool:
        try:
            text: str | None = self.path.read_text()
        except FileNotFoundError:
            text = None
        except OSError as exc:  # mid-swap: keep what we have, try next tick
            log.warning("watched file %s unreadable: %s", self.path, exc)
            return False
        digest = None if text is None else _digest(text)
        if digest == self._seen:
            return False
        self._seen = digest
        self._on_change(text)
        return True


class ConfigStore:
    """Holds the config in force; `current` is always a complete, validated snapshot."""

    def __init__(self, path: Path, validate: Callable[[Settings], None] = lambda s: None) -> None:
        """`validate` checks what only the plug-in knows (e.g. the safe default is one of its
        classes); it raises ValueError, and the config is then refused like any invalid one."""
        self.path = path
        self._validate = validate
        text = path.read_text()
        self.current: Settings = self._parse(text)  # an invalid config at start raises ConfigError
        self.version = _digest(text)
        self._seen = self.version
        self._listeners: list[Listener] = []
        self._watched: list[WatchedFile] = []
        self._on_outcome: Callable[[str], None] = lambda outcome: None
        self._loop = PeriodicThread("mlguard-config-watch", self._poll, lambda: self.current.reload.interval_s)

    def _parse(self, text: str) -> Settings:
        settings = parse(text)
        try:
            self._validate(settings)
        except ValueError as exc:
            raise ConfigError(f"invalid config: {exc}") from exc
        return settings

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def watch(self, watched: WatchedFile) -> None:
        """Poll another file on the same schedule as the config (read once now)."""
        watched.poll()
        self._watched.append(watched)

    def on_reload_outcome(self, callback: Callable[[str], None]) -> None:
        """Called with "success" or "failure" after each attempted reload (for metrics)."""
        self._on_outcome = callback

    def reload_if_changed(self) -> bool:
        """Re-read the file; swap the snapshot if it changed and is valid. True if swapped."""
        try:
            text = self.path.read_text()
        except OSError as exc:
            # Mid-swap or deleted: keep the last good config and try again next tick.
            log.warning("config file %s unreadable, keeping version %s: %s", self.path, self.version, exc)
            return False
        digest = _digest(text)
        if digest == self._seen:
            return False
        self._seen = digest
        if not text.strip():
            # Most likely read between a writer's truncate and its write: parsed, it would be
            # every default (routing.mode auto, model.tag cleared). The full file is read next.
            log.warning("config file %s is empty, keeping version %s (write {} for every default)",
                        self.path, self.version)
            return False
        try:
            new = self._parse(text)
        except ConfigError as exc:
            log.error("config reload rejected, keeping version %s: %s", self.version, exc)
            self._on_outcome("failure")
            return False
        old, self.current, self.version = self.current, new, digest
        log.info("config reloaded: version %s", digest)
        self._on_outcome("success")
        for listener in self._listeners:
            listener(old, new)
        return True

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout_s=5)

    def _poll(self) -> None:
        self.reload_if_changed()
        for watched in self._watched:
            watched.poll()
