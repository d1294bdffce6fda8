"""What every worker must remember about model versions, across workers and restarts.

One small JSON file, `admin.state_dir/<app>/model.json`, written atomically and polled by every
worker with the config (like the admin override):
- `tag`: the `model.tag` these memories belong to; when the config names another tag they reset,
  so a rejected or rolled-back version is not tried again *until model.tag changes*;
- `bad`: versions rolled back and tags refused at a swap, with why: never loaded again under that
  tag;
- `last_good`: the version that served before the latest swap, loaded after a restart when the
  tag's own version is bad.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from service.worker.config_store import WatchedFile, file_lock, write_json_atomically

log = logging.getLogger("mlguard.model")

MODEL_FILE = "model.json"


@dataclass(frozen=True)
class Memory:
    tag: str | None = None
    bad: dict[str, str] = field(default_factory=dict)  # version -> why
    last_good: str | None = None


class ModelMemory:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / MODEL_FILE
        self._lock = threading.Lock()
        self.current = self._read()
        self.listeners: list = []  # called with the new Memory when another worker changed it
        self.watched = WatchedFile(self.path, self._on_file)

    def _read(self) -> Memory:
        try:
            data = json.loads(self.path.read_text())
            return Memory(data.get("tag"), dict(data.get("bad") or {}), data.get("last_good"))
        except FileNotFoundError:
            return Memory()
        except (ValueError, TypeError, AttributeError) as exc:  # a hand edit gone wrong
            log.error("model state file %s invalid, ignoring it: %s", self.path, exc)
            return Memory()

    def _on_file(self, text: str | None) -> None:
        new = self._read()
        with self._lock:
            if new == self.current:
                return
            self.current = new
        for listener in self.listeners:
            listener(new)

    def _update(self, change: Callable[[Memory], Memory]) -> Memory:
        """Apply `change` to the file as it is now (another worker may have written since this
        one last polled it), under the file's lock."""
        with self._lock, file_lock(self.path):
            on_file = self._read()
            new = change(on_file)
            if new != on_file:
                write_json_atomically(self.path, asdict(new))
            self.current = new
            return new

    def for_tag(self, tag: str) -> Memory:
        """The memories of this tag: reset when the file still speaks of another one."""
        if self.current.tag != tag:
            return self._update(lambda m: m if m.tag == tag else replace(m, tag=tag, bad={}))
        return self.current

    def mark_bad(self, version: str, why: str) -> Memory:
        return self._update(lambda m: replace(m, bad={**m.bad, version: why}))

    def forget(self, tag_or_version: str) -> Memory:
        return self._update(lambda m: replace(m, bad={k: v for k, v in m.bad.items() if k != tag_or_version}))

    def set_last_good(self, version: str) -> Memory:
        return self._update(lambda m: replace(m, last_good=version))
