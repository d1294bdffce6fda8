"""POST /feedback and GET /predictions/{id} in-process (Starlette's TestClient), on a real SQLite
store, for what the served plug-ins of the HTTP tests cannot send: a regression plug-in's
outcomes, and a logged row holding NaN (the shipped plug-ins' schemas refuse NaN; a user's may
not). Over HTTP: tests/test_feedback_http.py and tests/test_store_http.py."""
from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from apps.diabetes.app import DIABETES_APP
from monitors.metrics import StoreMetrics
from service.api.records import records_app
from service.scoring.prediction import new_request_id
from service.store import PredictionRecord, PredictionStore, open_store
from service.worker.config import Settings

TOKEN = "records-token-31f0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def store(tmp_path) -> Iterator[PredictionStore]:
    s = open_store(f"sqlite:///{tmp_path / 'predictions.db'}", DIABETES_APP.name)
    yield s
    s.close()


@pytest.fixture
def client(store: PredictionStore, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    for variable in ("MLGUARD_FEEDBACK_TOKEN", "MLGUARD_MONITORING_TOKEN"):
        monkeypatch.setenv(variable, TOKEN)
    runtime = SimpleNamespace(records=store, store_metrics=StoreMetrics(CollectorRegistry()),
                              settings=Settings, app=DIABETES_APP)
    return TestClient(records_app(lambda: runtime))


def _logged(store: PredictionStore, inputs: dict) -> str:
    request_id = new_request_id()
    store.write([PredictionRecord(request_id=request_id, ts=time.time(), app=DIABETES_APP.name,
                                  model_version="v1", route="model", cause="none", inputs=inputs,
                                  model_output={"value": 140.0}, answer={"value": 140.0})])
    return request_id


def test_a_regression_outcome_must_be_a_number_not_a_boolean(client, store) -> None:
    request_id = _logged(store, {"bmi": 0.03})
    refused = client.post("/feedback", headers=AUTH, json={"request_id": request_id, "outcome": True})
    assert refused.status_code == 400 and refused.json()["error"].startswith("outcome"), refused.text
    assert store.get(request_id)["outcome"] is None
    for outcome in (151, 151.5):  # an integer and a float are both a value
        other = _logged(store, {"bmi": 0.03})
        r = client.post("/feedback", headers=AUTH, json={"request_id": other, "outcome": outcome})
        assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
        assert store.get(other)["outcome"] == outcome


def test_a_logged_nan_is_read_back_as_null(client, store) -> None:
    request_id = _logged(store, {"bmi": float("nan"), "age": 0.01})
    r = client.get(f"/predictions/{request_id}", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["inputs"] == {"bmi": None, "age": 0.01}


def test_deleting_a_prediction_still_in_a_write_buffer_asks_for_a_retry(store, monkeypatch) -> None:
    """An id issued moments ago whose row is not in the log yet: 503 with Retry-After, not a 404
    that would tell the client there is nothing to erase (the row would land after it)."""
    monkeypatch.setenv("MLGUARD_ADMIN_TOKEN", TOKEN)  # DELETE takes the admin token
    client = TestClient(records_app(lambda: SimpleNamespace(records=store, settings=Settings)))
    r = client.delete(f"/predictions/{new_request_id()}", headers=AUTH)
    assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
    old = "0" * 12 + "ab" * 10  # well formed, issued in 1970: never this server's
    assert client.delete(f"/predictions/{old}", headers=AUTH).status_code == 404
    logged = _logged(store, {"bmi": 0.03})
    assert client.delete(f"/predictions/{logged}", headers=AUTH).json() == {"request_id": logged, "deleted": True}
