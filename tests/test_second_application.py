"""A second plug-in, from another framework: the tumour app (tests/apps/tumour.py), binary, served
with a LightGBM booster saved by `bentoml.lightgbm`, over HTTP.

Its own schema (one field with an alias), rules, decision words and batch key; the alias is the
name clients see everywhere: 400s, input-check reasons, metric labels.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps.train_tumour import load_tumour_data, split, train_if_missing
from tests.support.metrics import scrape, total
from tests.support.server import BENTOML, ServerProcess
from tests.support.wait import wait_until

# A long drill: in CI and `make test-all`, not in a local `make test` (Makefile).
pytestmark = pytest.mark.drill

FEATURES = ["radius", "texture", "smoothness", "concave_points", "worst_area", "worstConcavePoints"]
DECISIONS = {"discharge", "refer"}


@pytest.fixture(scope="module")
def stored_tag() -> str:
    return str(train_if_missing().tag)


@pytest.fixture(scope="module")
def tumour(tmp_path_factory, stored_tag: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        target="tests.apps.tumour:TumourService",
        workdir=tmp_path_factory.mktemp("tumour"),
        workers=1,
        # A small window checked often, so a check with data runs within seconds; alert-only, as
        # the tests replay a few rows (drift by any measure); no breaker (the fault drill fails
        # every call on purpose).
        env={
            "MLGUARD_MODEL__TAG": stored_tag, "MLGUARD_DRIFT__ACTION": "alert",
            "MLGUARD_DRIFT__WINDOW_SIZE": "50", "MLGUARD_DRIFT__MIN_SAMPLES": "30",
            "MLGUARD_DRIFT__CHECK_INTERVAL_S": "0.5", "MLGUARD_CIRCUIT__ENABLED": "false",
        },
    )
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(tumour: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tumour.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, float]]:
    """A clearly benign and a clearly malignant holdout sample, as clients send them."""
    _, holdout = split(load_tumour_data())
    by_class = {}
    for diagnosis, extreme in (("benign", "idxmin"), ("malignant", "idxmax")):
        rows = holdout[holdout.diagnosis == diagnosis]
        row = rows.loc[getattr(rows.worstConcavePoints, extreme)()]
        by_class[diagnosis] = {f: float(row[f]) for f in FEATURES}
    return by_class


def test_answers_in_its_own_shape_and_words(client: httpx.Client, samples, stored_tag: str) -> None:
    answers = {}
    for diagnosis, row in samples.items():
        r = client.post("/predict", json=row)
        assert r.status_code == 200, r.text
        answers[diagnosis] = body = r.json()
        assert set(body) == {"request_id", "probability", "decision", "route", "reasons", "rules",
                             "model_version"}
        assert body["route"] == "model" and body["reasons"] == []
        assert body["model_version"] == stored_tag
        assert 0.0 <= body["probability"] <= 1.0
        assert body["decision"] in DECISIONS
    # The probability is that of the positive class, "malignant", and "refer" is its decision.
    assert answers["benign"]["probability"] < 0.5 < answers["malignant"]["probability"]
    assert answers["benign"]["decision"] == "discharge"
    assert answers["malignant"]["decision"] == "refer"


def test_its_batch_key_is_its_own(client: httpx.Client, samples) -> None:
    rows = [samples["benign"], samples["malignant"]]
    r = client.post("/predict_batch", json={"samples": rows})
    assert r.status_code == 200, r.text
    assert [p["decision"] for p in r.json()["predictions"]] == ["discharge", "refer"]
    assert client.post("/predict_batch", json={"applications": rows}).status_code == 400


def test_a_400_names_the_field_as_clients_send_it(client: httpx.Client, samples) -> None:
    r = client.post("/predict", json={**samples["benign"], "worstConcavePoints": "high"})
    assert r.status_code == 400
    assert r.json()["detail"][0]["loc"] == ["worstConcavePoints"]
    # The Python attribute name is not what the API accepts.
    row = dict(samples["benign"])
    row["worst_concave_points"] = row.pop("worstConcavePoints")
    r = client.post("/predict", json=row)
    assert r.status_code == 400
    assert {tuple(e["loc"]) for e in r.json()["detail"]} >= {("worstConcavePoints",)}


def test_out_of_range_names_the_alias_and_is_counted(
    client: httpx.Client, tumour: ServerProcess, samples
) -> None:
    def violations() -> float:
        return total(scrape(tumour.url), "mlguard_input_violations_total",
                     check="input.out_of_range", field="worstConcavePoints")

    before = violations()
    # Within the schema's bounds (a share), far outside the training range (at most 0.291).
    r = client.post("/predict", json={**samples["benign"], "worstConcavePoints": 0.9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"] == "heuristic"
    assert body["reasons"] == ["input.out_of_range:worstConcavePoints"]
    assert "worst_many_concave_points" in body["rules"]  # the rules read the row by its alias
    assert body["decision"] in DECISIONS and 0.0 <= body["probability"] <= 1.0
    assert violations() == before + 1


def test_metrics_and_state_show_the_lightgbm_version(
    client: httpx.Client, tumour: ServerProcess, samples, stored_tag: str
) -> None:
    client.post("/predict", json=samples["malignant"])
    samples_ = scrape(tumour.url)
    assert total(samples_, "mlguard_model_loaded") == 1
    assert total(samples_, "mlguard_model_info", model_version=stored_tag) == 1
    assert total(samples_, "mlguard_decisions_total", route="model", decision="refer") >= 1
    assert total(samples_, "mlguard_decisions_total", decision="decline") == 0
    state = client.get("/admin/state").json()
    assert state["app"] == "tumour" and state["task"] == "binary"
    assert state["model"]["version"] == stored_tag
    assert state["model"]["yardstick"]["metric"] == "roc_auc"


def test_the_store_shows_a_lightgbm_model_with_its_yardstick(stored_tag: str) -> None:
    out = subprocess.run(
        [BENTOML, "models", "get", stored_tag], check=False, capture_output=True, text=True,
        timeout=60, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"}, cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    assert "module: bentoml.lightgbm" in out.stdout
    assert "mlguard_app: tumour" in out.stdout
    assert "model_beats_rules" in out.stdout  # the yardstick, saved with the model


def test_output_checks_catch_a_bad_output(client: httpx.Client, tumour: ServerProcess, samples) -> None:
    """Fault drill: the booster's answers are replaced by NaN; the output checks send the row to
    the rules, and the model answers again when the drill ends."""
    original = tumour.config_path.read_text()
    tumour.config_path.write_text(original + "\nfaults:\n  model_invalid_output_ratio: 1.0\n")
    try:
        caught: dict = {}

        def rules_answer() -> bool:
            caught.update(client.post("/predict", json=samples["malignant"]).json())
            return caught["route"] == "heuristic"

        assert wait_until(rules_answer, timeout_s=20), caught
        assert caught["reasons"] == ["output.invalid:nan"]
        assert caught["decision"] in DECISIONS and caught["rules"]
    finally:
        tumour.config_path.write_text(original)
    assert wait_until(
        lambda: client.post("/predict", json=samples["malignant"]).json()["route"] == "model", 20
    )


def test_drift_check_runs_on_its_features_and_probability(
    client: httpx.Client, tumour: ServerProcess
) -> None:
    _, holdout = split(load_tumour_data())
    rows = [{f: float(r[f]) for f in FEATURES} for r in holdout.to_dict("records")][:60]
    # Rows fed before the drift process answers are dropped by the feed: wait until it answers.
    assert wait_until(lambda: client.get("/monitoring/drift").status_code == 200, 60)
    assert client.post("/predict_batch", json={"samples": rows}).status_code == 200
    status: dict = {}

    def checked() -> bool:
        status.update(client.get("/monitoring/drift").json())
        return status.get("last_outcome") in ("drift", "no_drift")

    assert wait_until(checked, timeout_s=30), status
    assert set(status["features"]) == set(FEATURES)  # aliases, as clients send them
    assert status["prediction"]["method"] == "ks"  # the positive class's probability
    assert total(scrape(tumour.url), "mlguard_drift_checks_total") > 0
