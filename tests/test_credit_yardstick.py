"""The credit plug-in's yardstick (model vs rules on the test split) is saved with the model and
shown where an operator looks: GET /admin/state, the startup log, `bentoml models get`."""
from __future__ import annotations

import os
import subprocess

import httpx
import yaml

from tests.support.server import BENTOML, ServerProcess


def test_yardstick_is_shown_everywhere(client: httpx.Client, server: ServerProcess) -> None:
    model = client.get("/admin/state").json()["model"]
    tag, yardstick = model["version"], model["yardstick"]
    assert model["loaded"] and tag.startswith("credit_risk:")
    assert yardstick["metric"] == "roc_auc" and yardstick["rows"] == 891
    assert yardstick["model_beats_rules"] is True
    assert yardstick["model"]["roc_auc"] > yardstick["heuristic"]["roc_auc"]
    assert 0.5 < yardstick["agreement"] <= 1.0

    out = subprocess.run(
        [BENTOML, "models", "get", tag, "-o", "yaml"], capture_output=True, text=True, check=True,
        timeout=60, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"},
    ).stdout
    card = yaml.safe_load(out)["metadata"]["mlguard"]
    assert card["yardstick"] == yardstick
    assert card["task"] == "binary" and card["classes"] == ["good", "bad"]

    started = [line for line in server.log_text().splitlines() if f"serving {tag} (binary" in line]
    assert len(started) == 2, server.log_tail()  # one line per worker
    assert f"roc_auc model {yardstick['model']['roc_auc']:.4g}" in started[0]
