"""The API workers never import evidently (3-4 s and ~290 MB per process): only the drift process does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import asyncio, sys
from apps.credit.app import CreditRiskService
row = {"seniority": 9, "home": "rent", "time": 60, "age": 30, "marital": "married",
       "records": "no", "job": "freelance", "expenses": 73, "income": 129.0, "assets": 0.0,
       "debt": 0.0, "amount": 800, "price": 846}

async def serve_one():
    worker = CreditRiskService.inner()  # what an API worker builds in __init__
    try:
        return await worker.runtime.pipeline.predict([row])
    finally:
        await worker.runtime.stop()

(answer,) = asyncio.run(serve_one())
assert answer.route == "model", answer
print(sorted(m for m in sys.modules if m.split(".")[0] in ("evidently", "plotly", "statsmodels")))
"""


def test_api_worker_serves_without_importing_evidently(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLGUARD_ADMIN__STATE_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        check=False,  # the assertion below shows stderr when it fails
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_training_is_deterministic() -> None:
    from apps.credit.app import CREDIT_APP
    from apps.credit.data import SEED, TARGET, load_credit_data, split_data, to_rows
    from apps.credit.model import build_model

    features = CREDIT_APP.features
    split = split_data(load_credit_data())
    assert split_data(load_credit_data()).test.equals(split.test)
    x = features.matrix(to_rows(split.train, features.names))
    x_test = features.matrix(to_rows(split.test, features.names))
    y = split.train[TARGET].to_numpy()  # the class names, as apps/credit/train.py fits them
    runs = [
        build_model(features, SEED, max_iter=100).fit(x, y).predict_proba(x_test)
        for _ in range(2)
    ]
    assert (runs[0] == runs[1]).all()
