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


# BentoML logs a request body that fails validation as an ERROR with a ~25-line traceback
# (bentoml._internal.server.http_app.log_exception). A client's bad request is not a server error:
# one WARNING line naming the fields and the reasons says all there is to say.
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


class ClientErrorFilter(logging.Filter):
    """Rewrites a request-validation error record into one WARNING line, in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        import pydantic

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, pydantic.ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()
            )
            record.msg = "bad request %s [%s]: %s"
            record.args = (*(record.args or ()), problems)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def quiet_client_errors() -> None:
    """Idempotent: install the filter once per process."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())
