"""A request's metric updates written in one locked section (service/scoring/metric_writes.py):
in multiprocess mode, as BentoML's workers run, the files must hold exactly what the public API
would have written, update by update."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.scoring import metric_writes

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter whose PROMETHEUS_MULTIPROC_DIR is set before prometheus_client loads.
CHILD = """
import json, sys
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from monitors.metrics import Metrics
from service.scoring import metric_writes
from service.scoring.recorder import MetricsRecorder
from service.worker.config import Settings
from tests.test_recorder import TASK, _requests, record_one_by_one

metrics = Metrics(CollectorRegistry())
recorder = MetricsRecorder(metrics, TASK)
for preds, found in _requests():
    if sys.argv[1] == "folded":
        recorder.record([{} for _ in preds], preds, found, Settings())
    else:
        record_one_by_one(metrics, preds, found)
registry = CollectorRegistry()
MultiProcessCollector(registry)
samples = {
    s.name + json.dumps(sorted(s.labels.items())): s.value
    for family in registry.collect() for s in family.samples
    if family.name.startswith("mlguard_") and family.type in ("counter", "histogram")
}
batched = any(lock is not None for lock in metric_writes._locks.values())
print(json.dumps({"samples": samples, "batched": batched}))
"""


def _run(mode: str, folder: Path) -> dict:
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_multiprocess_files_hold_what_the_public_api_writes(tmp_path: Path) -> None:
    folded, plain = _run("folded", tmp_path / "folded"), _run("plain", tmp_path / "plain")
    assert folded["batched"]  # the one-lock path was taken, not the public fallback
    got, want = folded["samples"], plain["samples"]
    # The recorder creates its known series at 0 from the start; the public calls only those used.
    assert {k for k, v in got.items() if v} == {k for k, v in want.items() if v}
    for key, value in want.items():
        if "_sum" in key.split("[", 1)[0]:
            assert abs(got[key] - value) <= 1e-12 * max(1.0, abs(value)), key
        else:
            assert got[key] == value, key
    assert sum(v for k, v in want.items() if k.startswith("mlguard_requests_total")) > 100


class _Value:
    """A value class without prometheus_client's internals (single-process, or a future release)."""

    def __init__(self) -> None:
        self.added: list[float] = []

    def inc(self, amount: float) -> None:
        self.added.append(amount)


class _OtherValue(_Value):
    pass


def test_values_without_the_internals_go_through_their_public_inc() -> None:
    a, b, c = _Value(), _Value(), _OtherValue()
    metric_writes.write([(a, 1), (b, 0.25), (a, 2)])
    metric_writes.write([(c, 3), (a, 4)])  # two classes in one request: each its own inc()
    metric_writes.write([])
    assert (a.added, b.added, c.added) == ([1, 2, 4], [0.25], [3])
    assert metric_writes._locks[_Value] is None
