"""The model version a worker serves: loading at start, swapping on a config change, rolling back.

At start the worker loads `model.tag` (default: the plug-in's `model_name:latest`). A version that
cannot be served (missing, no guard card, wrong task, classes or features, failing or too slow a
warm-up, not beating the rules on its yardstick) is refused with one log line naming the fix; the
worker stays up, the rules answer every row (`model.unavailable`), and the load is retried in the
background with backoff, so a model imported later is served without a restart.

When `model.tag` changes, the new version is loaded and checked in a background thread and swapped
in atomically between requests (`current` is read once per request); a version that fails its
checks is never swapped in. For `model.rollback_window_s` after a swap, the new version is watched:
if its circuit opens or too many of its calls fail, the worker swaps back to the previous version
and remembers the bad one (service/worker/model_memory.py); the other workers read that memory
within a reload interval and follow, and no worker loads it again until `model.tag` changes.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from monitors.periodic import PeriodicThread
from service.scoring.model import LoadedModel, ModelRefused, load_model
from service.spec import GuardedApp
from service.worker.config import ModelConfig
from service.worker.model_memory import Memory, ModelMemory

log = logging.getLogger("mlguard.model")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 10.0  # a model imported later is picked up within this


class RememberedBad(ModelRefused):
    """A tag or version this plug-in's workers rejected or rolled back under the current tag."""


@dataclass
class _Watch:
    """The rollback window of the version swapped in last."""

    version: str
    until: float  # monotonic deadline
    calls: int = 0
    failures: int = 0


class ModelSlot:
    def __init__(
        self,
        app: GuardedApp,
        tag: str,
        settings: Callable[[], ModelConfig],
        memory: ModelMemory,
    ) -> None:
        self.app = app
        self.tag = tag
        self._settings = settings
        self.memory = memory
        self.current: LoadedModel | None = None  # read once per request; swapped whole
        self.previous: LoadedModel | None = None  # what a rollback goes back to
        self.problem: str | None = None  # why no version, or not the configured one, is served
        self.rolled_back: dict[str, str] = {}  # version -> why, as this worker saw it
        # Called after a version is put in the slot (the runtime publishes it in its metrics).
        self.on_loaded: Callable[[LoadedModel], None] = lambda loaded: None
        # Called with "swapped", "failed" or "rolled_back" (mlguard_model_swaps_total), and with the
        # load time of every version loaded (mlguard_model_load_seconds).
        self.on_swap: Callable[[str], None] = lambda outcome: None
        self.on_load_seconds: Callable[[float], None] = lambda seconds: None
        # `_lock` guards what is in the slot (current, previous, the watch): held only to change
        # them, never during a load, so a rollback or a request's report never waits on one.
        # `_swapping` lets one swap thread load at a time.
        self._lock = threading.Lock()
        self._swapping = threading.Lock()
        self._watch: _Watch | None = None
        self._swap_failed = False  # the last swap to `tag` was refused
        self._retry_s = RETRY_FIRST_S
        self._retry = PeriodicThread("mlguard-model-load", self._retry_tick, lambda: self._retry_s)
        memory.listeners.append(self._on_memory)

    # -- loading ---------------------------------------------------------------------------------

    def _load(self, tag: str) -> LoadedModel:
        bad = self.memory.for_tag(self.tag).bad
        if tag in bad:
            raise RememberedBad(f"model {tag} was rejected ({bad[tag]}); "
                                "it is not loaded again until model.tag changes")
        cfg = self._settings()
        loaded = load_model(self.app, tag, cfg.warmup_timeout_s, cfg.allow_worse_than_rules)
        self.on_load_seconds(loaded.seconds)
        if loaded.version in bad:
            raise RememberedBad(
                f"model {loaded.version} was rolled back ({bad[loaded.version]}); "
                f"it is not loaded again until model.tag changes"
            )
        return loaded

    def load(self) -> bool:
        """At start and on retry: the configured tag; True when a version is in the slot.

        A tag remembered as rejected or rolled back is replaced by the last good version; any
        other refusal leaves the rules answering while the load is retried."""
        tag = self.tag
        try:
            loaded = self._load(tag)
        except RememberedBad as exc:
            loaded = self._last_good(exc)
            if loaded is None:
                self._refused(str(exc))
                return False
        except ModelRefused as exc:
            self._refused(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 -- a broken model file must not stop the worker
            self._refused(f"model {self.tag} failed to load: {type(exc).__name__}: {exc}")
            return False
        with self._lock:
            if self.current is not None or tag != self.tag:
                return self.current is not None  # a swap won the race: its version stays
            self._put(loaded)
        # What a restart falls back to if a later tag cannot be served.
        self.memory.set_last_good(loaded.version)
        return True

    def _last_good(self, refused: ModelRefused) -> LoadedModel | None:
        last_good = self.memory.current.last_good
        if not last_good or last_good in self.memory.current.bad or last_good == self.tag:
            return None
        try:
            loaded = self._load(last_good)
        except Exception:  # noqa: BLE001 -- the configured tag's refusal is what gets logged
            return None
        log.error("model %s not served (%s); serving the last good version %s",
                  self.tag, refused, loaded.version)
        return loaded

    def _refused(self, problem: str) -> None:
        if problem != self.problem:  # one line per distinct problem, not one per retry
            log.error("model not served, the rules answer every row: %s", problem)
        self.problem = problem

    def _put(self, loaded: LoadedModel) -> None:
        self.current, self.problem = loaded, None
        log.info("serving %s (%s, loaded and warmed up in %.2f s); %s",
                 loaded.version, loaded.card.task, loaded.seconds, _yardstick_line(loaded))
        self.on_loaded(loaded)

    def _retry_tick(self) -> None:
        if self.current is not None or self.load():
            self._retry.stop(timeout_s=0)  # from its own thread: just ends the loop
        else:
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    def start_retrying(self) -> None:
        """Keep trying in the background until a version loads (no-op once loaded)."""
        if self.current is None:
            self._retry.start()

    # -- swapping --------------------------------------------------------------------------------

    def request(self, tag: str, settings_changed: bool = False) -> None:
        """`model.tag` changed: load, check and swap in the background; requests never wait.

        The same tag is tried again when the model settings changed since its swap failed (e.g.
        `allow_worse_than_rules` set after the gate refused it, as the refusal says to)."""
        if tag == self.tag and not (settings_changed and self._swap_failed):
            return
        if tag == self.tag:  # the operator changed what the refusal asked for: try it again
            self.memory.forget(tag)
        self.tag = tag
        self.memory.for_tag(tag)  # a new tag: what was remembered of the old one is forgotten
        threading.Thread(target=self._swap_to, args=(tag,), name="mlguard-model-swap",
                         daemon=True).start()

    def _swap_to(self, tag: str) -> None:
        with self._swapping:
            if tag != self.tag:  # the config moved on while this thread waited
                return
            try:
                loaded = self._load(tag)
            except Exception as exc:  # noqa: BLE001 -- refused or broken: the old version stays
                self.problem, self._swap_failed = str(exc), True
                if not isinstance(exc, RememberedBad):  # a restart must not try it either
                    self.memory.mark_bad(tag, f"refused at swap: {exc}")
                log.error("model swap to %s failed, still serving %s: %s", tag,
                          self.current.version if self.current else "the rules", exc)
                self.on_swap("failed")
                return
            with self._lock:
                if tag != self.tag:  # the config moved on during the load
                    return
                self._swap_in(loaded)

    def _swap_in(self, loaded: LoadedModel) -> None:
        """Put a freshly loaded version in the slot (holding `_lock`), watched for its rollback
        window."""
        self._swap_failed = False
        old = self.current
        if old is not None and old.version == loaded.version:
            return
        self.previous = old
        self._put(loaded)
        if old is not None:
            self.memory.set_last_good(old.version)
        window = self._settings().rollback_window_s
        self._watch = _Watch(loaded.version, time.monotonic() + window) if old else None
        log.warning("model swapped: %s -> %s", old.version if old else "none", loaded.version)
        self.on_swap("swapped")

    # -- rollback --------------------------------------------------------------------------------

    def observe(self, version: str | None, healthy: bool) -> None:
        """One model call of `version` ended; judged against the rollback window."""
        watch = self._watch
        if watch is None or version != watch.version:
            return
        if time.monotonic() > watch.until:
            self._watch = None  # survived its window
            return
        watch.calls += 1
        watch.failures += 0 if healthy else 1
        cfg = self._settings()
        if watch.calls >= cfg.rollback_min_calls and watch.failures / watch.calls >= cfg.rollback_failure_ratio:
            self.roll_back(watch.version, f"{watch.failures} of {watch.calls} calls failed after the swap")

    def circuit_opened(self) -> None:
        """Called by the circuit breaker, holding its lock: the rollback (which resets the
        circuit) runs in a thread of its own, or the two locks would be taken in both orders."""
        watch = self._watch
        if watch is not None and time.monotonic() <= watch.until:
            threading.Thread(target=self.roll_back, args=(watch.version, "its circuit opened after the swap"),
                             name="mlguard-model-rollback", daemon=True).start()

    def roll_back(self, version: str, why: str) -> None:
        """Swap back from `version`, if it is still the one served (a newer one may have come)."""
        with self._lock:
            bad, previous = self.current, self.previous
            if bad is None or previous is None or bad.version != version:
                return
            self.memory.mark_bad(bad.version, why)
            self._rolled_back(bad, previous, why)

    def _rolled_back(self, bad: LoadedModel, previous: LoadedModel, why: str) -> None:
        self.previous, self._watch = None, None
        self.rolled_back[bad.version] = why
        log.error("model %s rolled back to %s: %s", bad.version, previous.version, why)
        self._put(previous)
        self.problem = f"model {bad.version} was rolled back: {why}"
        self.on_swap("rolled_back")

    def _on_memory(self, memory: Memory) -> None:
        """Another worker remembered a bad version: follow it off the one this worker serves."""
        with self._lock:
            current = self.current
            if current is None or current.version not in memory.bad:
                return
            why = memory.bad[current.version]
            if self.previous is not None:
                self._rolled_back(current, self.previous, why)
                return
        # No previous version in this worker (e.g. restarted since): load the last good one.
        loaded = self._last_good(ModelRefused(f"model {current.version}: {why}"))
        if loaded is not None:
            with self._lock:
                self.rolled_back[current.version] = why
                self._put(loaded)
                self.on_swap("rolled_back")

    def stop(self) -> None:
        self._retry.stop(timeout_s=1)


def _yardstick_line(loaded: LoadedModel) -> str:
    """The saved yardstick in a few words, for the startup log line."""
    y = loaded.card.yardstick
    metric = y.get("metric")
    if not metric:
        return "no yardstick saved"
    return (
        f"yardstick on {y['rows']} held-out rows: {metric} model {y['model'][metric]:.4g}, "
        f"rules {y['heuristic'][metric]:.4g}"
    )
