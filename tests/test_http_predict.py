"""/predict and /predict_batch over real HTTP against a two-worker `bentoml serve`."""
from __future__ import annotations

from collections import Counter

import httpx

from tests.support.data import GOOD_ROW, credit_rows


def test_clean_row_is_answered_by_the_model(client: httpx.Client) -> None:
    r = client.post("/predict", json=GOOD_ROW)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"] == "model"
    assert body["reasons"] == [] and body["rules"] == []
    assert 0.0 <= body["probability"] <= 1.0
    assert body["decision"] == ("decline" if body["probability"] >= 0.5 else "approve")
    assert body["model_version"].startswith("credit_risk:")
    assert len(body["request_id"]) == 32


def test_every_row_of_the_data_set_is_answered(client: httpx.Client) -> None:
    rows = credit_rows()
    answered = []
    for start in range(0, len(rows), 500):
        r = client.post("/predict_batch", json={"applications": rows[start : start + 500]})
        assert r.status_code == 200, r.text
        answered.extend(r.json()["predictions"])
    assert len(answered) == len(rows) == 4454
    routes = {p["route"] for p in answered}
    assert routes <= {"model", "heuristic"}
    reasons = Counter(p["reasons"][0].split(":")[0] for p in answered if p["reasons"])
    assert sum(p["route"] == "model" for p in answered) > 0.9 * len(rows), reasons
