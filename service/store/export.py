"""Exporting labelled predictions for retraining: one row per labelled prediction, CSV or Parquet."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from service.store.predictions import PredictionStore

META_COLUMNS = ("outcome", "model_version", "route", "ts", "request_id")
# A CSV's compression, from its last suffix (`labels.csv.gz`), as pandas infers it from a name;
# the file is first written under another name, so it must be said.
CSV_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip", ".zst": "zstd"}


def export_labelled(
    store: PredictionStore, path: Path, limit: int | None = None, since_ts: float = 0
) -> int:
    """Write the labelled predictions (the newest `limit`, ts >= since_ts) to `path`, oldest
    first: one column per logged input field, then outcome, model_version, route, ts and
    request_id. Parquet when the name ends in `.parquet`, CSV otherwise. Returns the row count.

    Rows logged without inputs (`store.log_inputs: false`) have empty input columns.
    """
    rows = store.labelled(limit, since_ts, with_inputs=True)
    rows.reverse()  # oldest first: the order a training split by time expects
    fields: dict[str, None] = {}  # every input field, in the order first seen
    for row in rows:
        fields.update(dict.fromkeys(row.inputs or {}))
    clash = fields.keys() & set(META_COLUMNS)
    if clash:
        raise ValueError(f"input fields {sorted(clash)} clash with the export's own columns")
    frame = pd.DataFrame(
        [
            {**(row.inputs or {}), "outcome": row.outcome, "model_version": row.model_version,
             "route": row.route, "ts": row.ts, "request_id": row.request_id}
            for row in rows
        ],
        columns=[*fields, *META_COLUMNS],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a reader never sees half a file
    if path.suffix == ".parquet":
        _one_type_per_column(frame, fields)
        frame.to_parquet(partial, engine="pyarrow", index=False)
    else:
        frame.to_csv(partial, index=False, compression=CSV_COMPRESSION.get(path.suffix))
    os.replace(partial, path)
    return len(frame)


def _one_type_per_column(frame: pd.DataFrame, fields: Iterable[str]) -> None:
    """Parquet wants one type a column; an input field can hold several: raw values in rows
    logged before `store.redact` hashed it and "sha256:..." after, or a field the schema lets
    be a number or a string. Such a column is written as text (numbers with floats: floats)."""
    for name in fields:
        present = frame[name].notna()
        kinds = {type(v) for v in frame.loc[present, name]}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[name] = [str(v) if ok else None for v, ok in zip(frame[name], present)]
