"""The model version a worker serves, and the loader that fills the slot.

At start the worker tries to load `model.tag` (default: the plug-in's `model_name:latest`). A
version that cannot be served (missing from the store, saved without mlguard's guard card, of the
wrong task, classes or features, failing its warm-up) is refused with one log line naming the fix;
the worker stays up, the rules answer every row (`model.unavailable`), and the loader retries in
the background with backoff, so a model imported later is picked up without a restart.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from monitors.periodic import PeriodicThread
from service.scoring.model import LoadedModel, ModelRefused, load_model
from service.spec import GuardedApp

log = logging.getLogger("mlguard.model")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


class ModelSlot:
    def __init__(self, app: GuardedApp, tag: str) -> None:
        self.app = app
        self.tag = tag
        self.current: LoadedModel | None = None  # read once per request; swapped whole
        self.problem: str | None = None  # why no version is loaded
        # Called after a version is put in the slot (the runtime publishes it in its metrics).
        self.on_loaded: Callable[[LoadedModel], None] = lambda loaded: None
        self._retry_s = RETRY_FIRST_S
        self._retry = PeriodicThread("mlguard-model-load", self._retry_tick, lambda: self._retry_s)

    def load(self) -> bool:
        """Try once; True when a version is in the slot."""
        try:
            loaded = load_model(self.app, self.tag)
        except ModelRefused as exc:
            if str(exc) != self.problem:  # one line per distinct problem, not one per retry
                log.error("model not served, the rules answer every row: %s", exc)
            self.problem = str(exc)
            return False
        except Exception as exc:
            problem = f"model {self.tag} failed to load: {type(exc).__name__}: {exc}"
            if problem != self.problem:
                log.exception("model not served, the rules answer every row")
            self.problem = problem
            return False
        self.current, self.problem = loaded, None
        log.info("serving %s (%s, loaded and warmed up in %.2f s); %s",
                 loaded.version, loaded.card.task, loaded.seconds, _yardstick_line(loaded))
        self.on_loaded(loaded)
        return True

    def _retry_tick(self) -> None:
        if self.load():
            self._retry.stop(timeout_s=0)  # from its own thread: just ends the loop
        else:
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    def start_retrying(self) -> None:
        """Keep trying in the background until a version loads (no-op once loaded)."""
        if self.current is None:
            self._retry.start()

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
