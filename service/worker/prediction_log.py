"""The prediction log's two halves: what a worker hands over, and what the writer completes.

Every answered prediction goes to the store in three steps, two of them off the request path:

1. `PredictionLogRecorder.record` (the request path) hands references to the worker's write-behind
   buffer (service/store/write_behind.py).
2. The buffer's thread turns them into `LoggedRow`s, plain tuples (`to_wire`), and gives them to
   the log's sink. Under `bentoml serve` that is `MonitoringProcessSink`: one pickled message to
   the monitoring process (service/worker/drift_service.py), which writes for every worker of the
   instance and answers once the rows are committed. Running the writer there keeps its CPU and
   its wait for the GIL out of the process that serves (docs/BENCHMARKS.md, round 7).
3. `RecordWriter` completes the rows and writes them: in the monitoring process, or in the worker
   itself when that process cannot be reached (or none was started):
   - the rules' shadow output on rows the model answered (the paired yardstick needs both scorers
     on the same rows);
   - the model's shadow output on a share of the rows routed to the rules because of performance
     (`performance.shadow_ratio`), so paired evidence keeps arriving while the rules answer;
   - the privacy settings: inputs dropped entirely (`store.log_inputs: false`) or per field hashed
     with a salt or dropped (`store.redact`). Both apply as configured when the row is written.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pickle
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

from monitors import reasons
from monitors.tasks import InvalidOutput, Output, OutputPolicy
from service.scoring.model import LoadedModel, output_policy
from service.scoring.pipeline import Recorder
from service.scoring.prediction import ROUTE_HEURISTIC, ROUTE_MODEL, Prediction, issued_at
from service.spec import GuardedApp
from service.store import PredictionRecord, PredictionStore
from service.worker.config import Settings, StoreConfig
from service.worker.drift_feed import request_client

log = logging.getLogger("mlguard.store")

SALT_ENV = "MLGUARD_REDACT_SALT"
# A batch's hand-over to the monitoring process waits no longer than this before the worker
# writes it itself (service/api/records.py allows for it). Generous: that process runs niced,
# and under full load it answered in over 2 s now and then (docs/BENCHMARKS.md, round 7).
CALL_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 2.0  # the same, while the process has not answered (starting, or it failed)
LOCAL_S = 5.0  # after a failed hand-over, batches are written here this long before a new try
COMPLETE_SLICE = 50  # rows completed between two releases of the GIL (~1 ms of the rules' shadow)

# A row, its answer and its sender's hashed identity, as the request path hands them over.
Pending = tuple[dict[str, Any], Prediction, str | None]


class LoggedRow(NamedTuple):
    """One answered prediction on its way to the writer: plain values, pickled as one message."""

    request_id: str
    model_version: str
    route: str
    cause: str
    reasons: list[str]
    inputs: dict[str, Any]
    answer: dict[str, Any]
    client: str | None


def store_url(state_dir: Path, store: StoreConfig) -> str:
    """The store's URL: the configured one, else a SQLite file in the plug-in's state folder."""
    return store.url or f"sqlite:///{(state_dir / 'predictions.db').resolve()}"


class Redactor:
    """Applies `store.log_inputs` and `store.redact` to an input row before it is stored."""

    def __init__(self, salt: str | None = None) -> None:
        self._salt = (os.environ.get(SALT_ENV, "") if salt is None else salt).encode()

    def check(self, store: StoreConfig) -> None:
        """A hash without a salt can be reversed by hashing every likely value: refuse it."""
        hashed = [f for f, how in store.redact.items() if how == "hash"]
        if hashed and not self._salt:
            raise ValueError(f"store.redact hashes {hashed}: set {SALT_ENV} to a secret salt")

    def __call__(self, row: dict[str, Any], store: StoreConfig) -> dict[str, Any] | None:
        if not store.log_inputs:
            return None
        if not store.redact:
            return dict(row)
        kept: dict[str, Any] = {}
        for name, value in row.items():
            how = store.redact.get(name)
            if how is None:
                kept[name] = value
            elif how == "hash":
                digest = hashlib.sha256(self._salt + repr(value).encode())
                kept[name] = f"sha256:{digest.hexdigest()}"
        return kept


class PredictionLogRecorder(Recorder):
    """Hands each answered prediction to the write-behind log (the only step on the request path)."""

    def __init__(self, append: Callable[[list[Pending]], None]) -> None:
        self._append = append  # the write-behind buffer's append

    def record(self, rows: list[dict[str, Any]], predictions: list[Prediction], violations: Any,
               cfg: Settings) -> None:
        client = request_client(cfg.drift)  # once per request; None unless configured
        self._append([(row, p, client) for row, p in zip(rows, predictions)])


def to_wire(items: list[Pending]) -> list[LoggedRow]:
    """The write-behind's `prepare`, in the worker's writer thread: references to plain rows."""
    return [
        LoggedRow(p.request_id, p.model_version, p.route, p.cause, p.reasons, row,
                  p.output.fields, client)
        for row, p, client in items
    ]


def encode_rows(rows: Sequence[LoggedRow]) -> bytes:
    """A batch as the monitoring process's `log_rows` takes it. Plain tuples: a NamedTuple pickles
    through Python-level hooks, ~7 µs a row more to load on the other side (measured in round 8)."""
    return pickle.dumps([tuple(r) for r in rows], pickle.HIGHEST_PROTOCOL)


def decode_rows(batch: bytes) -> list[LoggedRow]:
    return [LoggedRow(*fields) for fields in pickle.loads(batch)]


class RecordWriter:
    """Completes `LoggedRow`s into `PredictionRecord`s and writes them to the store.

    A `RecordSink` (service/store/write_behind.py): `write` raises when the store does, so the
    caller keeps the rows for a retry."""

    written_by = "this worker"  # what GET /admin/state shows

    def __init__(
        self,
        app: GuardedApp,
        store: PredictionStore,
        served: Callable[[], LoadedModel | None],  # the version whose shadow is run
        settings: Callable[[], Settings],
        redactor: Redactor,
        beside_serving: bool = False,  # True in a worker: yield the GIL to its loop often
    ) -> None:
        self.app = app
        self.store = store
        self._served = served
        self._settings = settings
        self._redact = redactor
        self._slice = COMPLETE_SLICE if beside_serving else None

    def write(self, rows: Sequence[LoggedRow]) -> None:
        self.store.write(self.complete(rows))

    def complete(self, rows: Sequence[LoggedRow]) -> list[PredictionRecord]:
        """The records of `rows`. Beside serving, in slices: a worker's loop wants the GIL back at
        once, and a batch completed in one go held it for milliseconds (a visible share of p99)."""
        if self._slice is None:
            return self._complete(rows)
        records: list[PredictionRecord] = []
        for start in range(0, len(rows), self._slice):
            records.extend(self._complete(rows[start : start + self._slice]))
            time.sleep(0)  # releases the GIL; a thread waiting for it takes it now
        return records

    def _complete(self, rows: Sequence[LoggedRow]) -> list[PredictionRecord]:
        cfg, served = self._settings(), self._served()
        policy = _policy(served, cfg)
        model_shadow = self._model_shadow(rows, served, cfg, policy)
        records = []
        for i, r in enumerate(rows):
            model_out = r.answer if r.route == ROUTE_MODEL else model_shadow.get(i)
            if r.route == ROUTE_HEURISTIC:
                rules_out = r.answer
            elif r.route == ROUTE_MODEL:
                rules_out = self._rules_shadow(r.inputs, policy)
            else:  # the safe default: the rules failed on this row
                rules_out = None
            records.append(PredictionRecord(
                request_id=r.request_id,
                ts=issued_at(r.request_id) or 0.0,
                app=self.app.name,
                model_version=r.model_version,
                route=r.route,
                cause=r.cause,
                reasons=r.reasons,
                inputs=self._redact(r.inputs, cfg.store),
                model_output=model_out,
                rules_output=rules_out,
                answer=r.answer,
                client=r.client,
            ))
        return records

    def _rules_shadow(self, row: dict[str, Any], policy: OutputPolicy) -> dict[str, Any] | None:
        try:
            return self.app.task.from_rules(self.app.heuristic.score(row), policy).fields
        except Exception:  # noqa: BLE001 -- a failing rule leaves no shadow, never a lost row
            return None

    def _model_shadow(self, rows: Sequence[LoggedRow], served: LoadedModel | None, cfg: Settings,
                      policy: OutputPolicy) -> dict[int, dict]:
        """The model's outputs on the sampled rows that the performance route sent to the rules."""
        if served is None:
            return {}
        ratio = cfg.performance.shadow_ratio
        chosen = [i for i, r in enumerate(rows)
                  if r.cause == reasons.PERFORMANCE_BELOW_RULES and random.random() < ratio]
        if not chosen:
            return {}
        try:
            raw = served.model.predict_rows([self.app.features_of(rows[i].inputs) for i in chosen])
            outputs: list[Output | InvalidOutput] = self.app.task.from_model(raw, policy)
        except Exception:  # the shadow must never cost a row its record
            log.warning("model shadow failed on %d rows", len(chosen), exc_info=True)
            return {}
        return {i: out.fields for i, out in zip(chosen, outputs) if isinstance(out, Output)}


class MonitoringProcessSink:
    """Sends rows to the monitoring process's writer; writes them here when it cannot.

    One message per batch, pickled by the worker's writer thread and sent by BentoML's client,
    which is bound to the worker's event loop: the loop only sends bytes. The monitoring process
    answers after its commit, so rows count as written only once they are.

    When a call fails (the process starting or restarting, or its store write failing) or takes
    too long, `local` writes the batch in this worker (if that fails too, the write-behind keeps
    the rows for a retry; a retried row is stored once: ids already stored are skipped), and so
    does every batch for the next `LOCAL_S` seconds, after which the process is tried again. A
    process that has answered may take up to `timeout_s` (it runs niced: seconds under full load
    are normal); one that has not, `PROBE_TIMEOUT_S` (while it starts, a call waits in its socket's
    backlog). `hand_back` (shutdown) cancels a call in flight: the monitoring process may be
    stopping too."""

    def __init__(self, remote: Callable[[], Any], local: RecordWriter,
                 loop: asyncio.AbstractEventLoop, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._remote = remote  # () -> the monitoring process's proxy
        self._local = local
        self._loop = loop  # the worker's event loop, where the proxy's calls must run
        self._timeout_s = timeout_s
        self._answered = False  # the process's last call succeeded
        self._local_until = 0.0  # monotonic time before which batches are written here
        self._closing = False
        self._call: Future[None] | None = None

    def write(self, rows: Sequence[LoggedRow]) -> None:
        if self._closing or time.monotonic() < self._local_until:
            self._local.write(rows)
            return
        batch = encode_rows(rows)
        self._call = call = asyncio.run_coroutine_threadsafe(self._send(batch), self._loop)
        try:
            call.result(self._timeout_s if self._answered else PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 -- any failure there: this worker writes itself
            call.cancel()
            if self._answered or self._local_until == 0.0:
                log.warning("the monitoring process cannot write the log (%r): this worker writes",
                            exc)
            self._answered, self._local_until = False, time.monotonic() + LOCAL_S
            self._local.write(rows)
            return
        if not self._answered and self._local_until:
            log.info("the monitoring process writes the log again")
        self._answered = True

    def hand_back(self) -> None:
        """From now on this worker writes its rows itself (it is stopping)."""
        self._closing = True
        call = self._call
        if call is not None:
            call.cancel()

    @property
    def written_by(self) -> str:
        """Who writes now (GET /admin/state)."""
        if self._closing or time.monotonic() < self._local_until:
            return "this worker: the monitoring process cannot"
        return "the monitoring process"

    async def _send(self, batch: bytes) -> None:
        await self._remote().to_async.log_rows(batch=batch)


def _policy(served: LoadedModel | None, cfg: Settings) -> OutputPolicy:
    return output_policy(served.card if served else None, cfg.decision.threshold,
                         cfg.output_checks.range_tolerance, cfg.shadow.tolerance)
