"""A worker's side of the prediction log: every answered prediction goes to the store.

`PredictionLogRecorder.record` is the only call on the request path: it hands references to the
write-behind buffer (service/store/write_behind.py). Everything else happens in the writer
thread, just before the rows are written:

- the rules' shadow output on rows the model answered (the paired yardstick needs both scorers on
  the same rows; computed here, off the request path, where it costs the answer nothing);
- the model's shadow output on a share of the rows routed to the rules because of performance
  (`performance.shadow_ratio`), so paired evidence keeps arriving while the rules answer;
- the privacy settings: inputs dropped entirely (`store.log_inputs: false`) or per field hashed
  with a salt or dropped (`store.redact`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitors import reasons
from monitors.tasks import InvalidOutput, Output, OutputPolicy
from service.scoring.model import LoadedModel, output_policy
from service.scoring.pipeline import Recorder
from service.scoring.prediction import ROUTE_HEURISTIC, ROUTE_MODEL, Prediction, issued_at
from service.spec import GuardedApp
from service.store import PredictionRecord
from service.worker.config import Settings, StoreConfig
from service.worker.drift_feed import request_client

log = logging.getLogger("mlguard.store")

SALT_ENV = "MLGUARD_REDACT_SALT"

# A row, its answer, the config it was answered under, and its sender's hashed identity.
Pending = tuple[dict[str, Any], Prediction, Settings, str | None]


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
    """Hands each answered prediction to the write-behind log; `prepare` runs in its thread."""

    def __init__(
        self,
        app: GuardedApp,
        append: Callable[[list[Pending]], None],  # the write-behind buffer's append
        served: Callable[[], LoadedModel | None],
        redactor: Redactor,
    ) -> None:
        self.app = app
        self._append = append
        self._served = served
        self._redact = redactor

    def record(self, rows: list[dict[str, Any]], predictions: list[Prediction], violations: Any,
               cfg: Settings) -> None:
        client = request_client(cfg.drift)  # once per request; None unless configured
        self._append([(row, p, cfg, client) for row, p in zip(rows, predictions)])

    def prepare(self, items: list[Pending]) -> list[PredictionRecord]:
        """Runs in the writer thread: adds the shadow outputs and applies the privacy settings."""
        served = self._served()
        model_shadow = self._model_shadow(items, served)
        policies: dict[int, OutputPolicy] = {}  # one per config snapshot, not one per row
        records = []
        for i, (row, p, cfg, client) in enumerate(items):
            model_out = p.output.fields if p.route == ROUTE_MODEL else model_shadow.get(i)
            if p.route == ROUTE_HEURISTIC:
                rules_out = p.output.fields
            elif p.route == ROUTE_MODEL:
                policy = policies.get(id(cfg))
                if policy is None:
                    policy = policies[id(cfg)] = _policy(served, cfg)
                rules_out = self._rules_shadow(row, policy)
            else:  # the safe default: the rules failed on this row
                rules_out = None
            records.append(PredictionRecord(
                request_id=p.request_id,
                ts=issued_at(p.request_id) or 0.0,
                app=self.app.name,
                model_version=p.model_version,
                route=p.route,
                cause=p.cause,
                reasons=p.reasons,
                inputs=self._redact(row, cfg.store),
                model_output=model_out,
                rules_output=rules_out,
                answer=p.output.fields,
                client=client,
            ))
        return records

    def _rules_shadow(self, row: dict[str, Any], policy: OutputPolicy) -> dict[str, Any] | None:
        try:
            return self.app.task.from_rules(self.app.heuristic.score(row), policy).fields
        except Exception:  # noqa: BLE001 -- a failing rule leaves no shadow, never a lost row
            return None

    def _model_shadow(self, items: list[Pending], served: LoadedModel | None) -> dict[int, dict]:
        """The model's outputs on the sampled rows that the performance route sent to the rules."""
        if served is None:
            return {}
        chosen = [
            i for i, (_, p, cfg, _) in enumerate(items)
            if p.cause == reasons.PERFORMANCE_BELOW_RULES
            and random.random() < cfg.performance.shadow_ratio
        ]
        if not chosen:
            return {}
        cfg = items[chosen[0]][2]
        try:
            raw = served.model.predict_rows([self.app.features_of(items[i][0]) for i in chosen])
            outputs: list[Output | InvalidOutput] = self.app.task.from_model(raw, _policy(served, cfg))
        except Exception:  # the shadow must never cost a row its record
            log.warning("model shadow failed on %d rows", len(chosen), exc_info=True)
            return {}
        return {i: out.fields for i, out in zip(chosen, outputs) if isinstance(out, Output)}


def _policy(served: LoadedModel | None, cfg: Settings) -> OutputPolicy:
    return output_policy(served.card if served else None, cfg.decision.threshold,
                         cfg.output_checks.range_tolerance, cfg.shadow.tolerance)
