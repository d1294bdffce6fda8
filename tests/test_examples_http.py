"""The two worked examples served over HTTP: wine (multiclass) and diabetes (regression).

One real `bentoml serve` per app (module-scoped, one worker), each trained first when the store
has no guarded model. Per app: the answer's shape, a schema 400 naming the field, an input out of
the training range answered by the rules, the output checks catching a bad output (fault drill),
metrics counting exactly the requests sent, a drift check run, and the yardstick shown in
GET /admin/state, `bentoml models get` and the startup log.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.metrics import scrape, total
from tests.support.server import ROOT, ServerProcess
from tests.support.wait import wait_until

BENTOML = str(Path(sys.executable).parent / "bentoml")


@dataclass(frozen=True)
class Example:
    name: str  # the app's name (its model's name in the store, its config/<name>.yaml)
    module: str  # apps.<name>
    service: str  # the serve target
    batch_field: str
    out_of_range: tuple[str, float]  # a field and a schema-valid value far outside training
    bad_type: str  # a field to send as a string

    def rows(self) -> list[dict[str, Any]]:
        """Request rows: the held-out rows, then the training rows, as clients send them."""
        train_module = __import__(f"{self.module}.train", fromlist=["split"])
        app = getattr(__import__(f"{self.module}.app", fromlist=["x"]), f"{self.name.upper()}_APP")
        train, holdout = train_module.split(train_module.load_data())
        names = app.inputs.names
        return [
            {n: _plain(r[n]) for n in names}
            for frame in (holdout, train) for r in frame.to_dict("records")
        ]


def _plain(value: Any) -> Any:
    """numpy scalars as the JSON types a client sends (ints stay ints)."""
    return value.item() if hasattr(value, "item") else value


EXAMPLES = {
    "wine": Example(
        "wine", "apps.wine", "apps.wine.app:WineService", "wines",
        out_of_range=("proline", 3000.0), bad_type="alcohol",
    ),
    "diabetes": Example(
        "diabetes", "apps.diabetes", "apps.diabetes.app:DiabetesService", "patients",
        out_of_range=("bmi", 60.0), bad_type="s5",
    ),
}


def server_config(name: str, **faults: float) -> str:
    """The app's own config, with a small drift window checked often, alert-only drift (the tests
    replay the same rows, which is drift by any measure) and no circuit breaker (the fault drill
    fails model calls on purpose; the breaker has its own tests)."""
    data = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    data["drift"].update(window_size=50, min_samples=30, check_interval_s=0.5, action="alert")
    data["circuit"]["enabled"] = False
    data["faults"].update(faults)
    return yaml.safe_dump(data)


@dataclass
class Served:
    example: Example
    server: ServerProcess
    client: httpx.Client
    rows: list[dict[str, Any]]

    def predict(self, row: dict[str, Any]) -> httpx.Response:
        return self.client.post("/predict", json=row)

    def state(self) -> dict[str, Any]:
        return self.client.get("/admin/state").json()


def train_if_missing(example: Example) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run(
        [sys.executable, "-m", f"{example.module}.train", "--if-missing"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=300,
    )


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def served(request, tmp_path_factory) -> Iterator[Served]:
    example = EXAMPLES[request.param]
    train_if_missing(example)
    server = ServerProcess(
        target=example.service,
        workdir=tmp_path_factory.mktemp(example.name),
        workers=1,
        config_text=server_config(example.name),
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Served(example, server, client, example.rows())
    finally:
        server.stop()


def check_answer_shape(name: str, body: dict[str, Any]) -> None:
    if name == "wine":
        classes = {"class_0", "class_1", "class_2"}
        assert body["decision"] in classes
        probs = body["probabilities"]
        assert set(probs) == classes
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
        assert body["decision"] == max(probs, key=probs.get)
        assert "value" not in body and "probability" not in body
    else:
        assert isinstance(body["value"], float) and math.isfinite(body["value"])
        assert "decision" not in body and "probabilities" not in body


def test_answer_shape(served: Served) -> None:
    name = served.example.name
    for row in served.rows[:5]:
        response = served.predict(row)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["route"] == "model", body
        assert body["model_version"].startswith(f"{name}:")
        assert body["request_id"]
        check_answer_shape(name, body)
    batch = served.client.post(
        "/predict_batch", json={served.example.batch_field: served.rows[:3]}
    )
    assert batch.status_code == 200, batch.text
    answers = batch.json()["predictions"]
    assert len(answers) == 3
    for body in answers:
        check_answer_shape(name, body)


def test_schema_error_names_the_field(served: Served) -> None:
    field = served.example.bad_type
    response = served.predict({**served.rows[0], field: "a lot"})
    assert response.status_code == 400
    assert field in response.text
    missing = dict(served.rows[0])
    del missing[field]
    response = served.predict(missing)
    assert response.status_code == 400
    assert field in response.text
    response = served.predict({**served.rows[0], "colour": 1.0})  # extra fields are refused
    assert response.status_code == 400
    assert "colour" in response.text


def test_out_of_range_input_goes_to_the_rules(served: Served) -> None:
    field, value = served.example.out_of_range
    response = served.predict({**served.rows[0], field: value})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["route"] == "heuristic"
    assert f"input.out_of_range:{field}" in body["reasons"]
    assert body["rules"], "the rules that fired are named"
    check_answer_shape(served.example.name, body)


def test_output_checks_catch_a_bad_output(served: Served) -> None:
    """Fault drill: every model call answers NaN; the output checks send the rows to the rules."""
    server, row = served.server, served.rows[0]
    original = server.config_path.read_text()
    server.config_path.write_text(server_config(served.example.name, model_invalid_output_ratio=1.0))
    try:
        caught: dict[str, Any] = {}

        def rules_answer() -> bool:
            body = served.predict(row).json()
            caught.update(body)
            return body["route"] == "heuristic"

        assert wait_until(rules_answer, timeout_s=20), caught
        assert caught["reasons"][0].startswith("output.invalid"), caught
        assert caught["rules"]
        check_answer_shape(served.example.name, caught)
    finally:
        server.config_path.write_text(original)
    assert wait_until(lambda: served.predict(row).json()["route"] == "model", timeout_s=20)


def test_metrics_count_exactly_the_requests_sent(served: Served) -> None:
    name, url = served.example.name, served.server.url
    rows = served.rows[10:17]
    before = scrape(url)
    answers = [served.predict(r).json() for r in rows]
    assert all(a["route"] == "model" for a in answers), answers
    after = scrape(url)

    def delta(sample: str, **labels: str) -> float:
        return total(after, sample, **labels) - total(before, sample, **labels)

    assert delta("mlguard_requests_total") == len(rows)
    assert delta("mlguard_requests_total", route="model") == len(rows)
    if name == "wine":
        assert delta("mlguard_decisions_total") == len(rows)
        for decision, count in Counter(a["decision"] for a in answers).items():
            assert delta("mlguard_decisions_total", route="model", decision=decision) == count
    else:
        assert delta("mlguard_prediction_value_count", route="model") == len(rows)
        assert math.isclose(
            delta("mlguard_prediction_value_sum", route="model"),
            sum(a["value"] for a in answers),
            rel_tol=1e-9,
        )
        assert delta("mlguard_decisions_total") == 0


def test_drift_check_runs(served: Served) -> None:
    """Enough rows for the (small) window: a drift check with data runs within a few intervals."""
    # The drift process starts beside the worker and may still be starting: rows fed before it
    # answers are dropped by the feed (service/worker/drift_feed.py), so wait until it answers.
    assert wait_until(lambda: served.client.get("/monitoring/drift").status_code == 200, 60)
    rows = served.rows[:60]  # the window holds 50; a verdict needs 30
    response = served.client.post("/predict_batch", json={served.example.batch_field: rows})
    assert response.status_code == 200, response.text
    status: dict[str, Any] = {}

    def checked() -> bool:
        status.update(served.client.get("/monitoring/drift").json())
        return status.get("last_outcome") in ("drift", "no_drift")

    assert wait_until(checked, timeout_s=30), status
    assert status["window_rows"] >= 30
    app_features = set(served.rows[0])
    assert set(status["features"]) == app_features
    samples = scrape(served.server.url)
    assert total(samples, "mlguard_drift_checks_total") > 0
    assert (
        total(samples, "mlguard_drift_checks_total", outcome="drift")
        + total(samples, "mlguard_drift_checks_total", outcome="no_drift")
    ) > 0


def test_yardstick_is_shown_everywhere(served: Served) -> None:
    name = served.example.name
    model = served.state()["model"]
    tag, yardstick = model["version"], model["yardstick"]
    assert model["loaded"] and tag.startswith(f"{name}:")
    metric = {"wine": "accuracy", "diabetes": "mae"}[name]
    assert yardstick["metric"] == metric
    assert yardstick["model_beats_rules"] is True
    assert set(yardstick) >= {"rows", "model", "heuristic", "agreement"}

    out = subprocess.run(
        [BENTOML, "models", "get", tag, "-o", "yaml"],
        env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"},
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    card = yaml.safe_load(out)["metadata"]["mlguard"]
    assert card["yardstick"] == yardstick
    assert card["task"] == {"wine": "multiclass", "diabetes": "regression"}[name]

    task = card["task"]
    lines = [
        line for line in served.server.log_text().splitlines()
        if f"serving {tag} ({task}, loaded" in line
    ]
    assert lines, served.server.log_tail()
    assert f"{metric} model {yardstick['model'][metric]:.4g}" in lines[0]
    assert f"rules {yardstick['heuristic'][metric]:.4g}" in lines[0]
