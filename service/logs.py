"""Logging inside a BentoML worker: make mlguard's own lines reach the server output.

BentoML's server logging config sets the root logger to WARNING, so without this every INFO line
from `mlguard.*` (config reloads, the per-prediction line) is silently dropped in a worker.
The per-prediction line gets its own handler that writes the bare JSON object, one per line, so a
log shipper can parse it without a regex; the other mlguard lines keep BentoML's format.
"""
from __future__ import annotations

import logging
import sys

PREDICTION_LOGGER = "mlguard.predictions"
_HANDLER_NAME = "mlguard-prediction-json"


def configure_worker_logging() -> None:
    """Idempotent: safe to call once per GuardedRuntime, several may live in one process."""
    logging.getLogger("mlguard").setLevel(logging.INFO)
    predictions = logging.getLogger(PREDICTION_LOGGER)
    if any(h.get_name() == _HANDLER_NAME for h in predictions.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)  # where BentoML's own handler writes too
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    predictions.addHandler(handler)
    predictions.propagate = False  # not a second time, wrapped in BentoML's format
