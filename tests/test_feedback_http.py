"""The prediction log and POST /feedback over HTTP, on the shared server (SQLite store).

The same API on PostgreSQL, with the store cut under load and performance routing, is in
tests/test_store_http.py.
"""
from __future__ import annotations

import time

import httpx
import pytest

from apps.credit.app import CREDIT_APP
from service.scoring.prediction import new_request_id
from tests.conftest import FEEDBACK_TOKEN, MONITORING_TOKEN
from tests.support.data import held_out_rows
from tests.support.metrics import scrape, total
from tests.support.wait import wait_until

FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
READ = {"Authorization": f"Bearer {MONITORING_TOKEN}"}
OLD_ID = "0" * 12 + "ab" * 10  # well formed, "issued" in 1970: never by this server


def logged(client: httpx.Client, request_id: str, timeout_s: float = 10.0) -> dict:
    """The prediction's record, once its worker's write buffer has flushed it."""
    found: dict = {}

    def landed() -> bool:
        r = client.get(f"/predictions/{request_id}", headers=READ)
        if r.status_code == 200:
            found.update(r.json())
        return r.status_code == 200

    assert wait_until(landed, timeout_s), f"{request_id} never reached the prediction log"
    return found


@pytest.fixture(scope="module")
def answered(client: httpx.Client) -> list[tuple[dict, dict]]:
    rows = held_out_rows(40)
    r = client.post("/predict_batch", json={"applications": rows})
    r.raise_for_status()
    return list(zip(rows, r.json()["predictions"]))


def test_every_answer_is_logged_with_the_rules_shadow(client, answered) -> None:
    for row, p in answered[:10]:
        record = logged(client, p["request_id"])
        assert record["route"] == p["route"]
        assert record["answer"]["probability"] == p["probability"]
        assert record["reasons"] == p["reasons"]
        assert record["model_version"] == p["model_version"]
        assert record["inputs"] == {k: row[k] for k in record["inputs"]} and len(record["inputs"]) == len(row)
        rules = CREDIT_APP.heuristic.score(row).probability
        if p["route"] == "model":
            assert record["model_output"] == {"probability": p["probability"], "decision": p["decision"]}
            assert record["rules_output"]["probability"] == pytest.approx(rules)
        else:
            assert record["rules_output"]["probability"] == pytest.approx(rules)
        assert record["outcome"] is None


def test_feedback_statuses(client, answered) -> None:
    (_, p), (_, q) = answered[10], answered[11]
    logged(client, p["request_id"])
    first = client.post("/feedback", headers=FEEDBACK, json={"request_id": p["request_id"], "outcome": "bad"})
    assert first.status_code == 200 and first.json()["status"] == "recorded"
    again = client.post("/feedback", headers=FEEDBACK, json={"request_id": p["request_id"], "outcome": "bad"})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    other = client.post("/feedback", headers=FEEDBACK, json={"request_id": p["request_id"], "outcome": "good"})
    assert other.status_code == 409 and "different outcome" in other.json()["error"]
    assert logged(client, p["request_id"])["outcome"] == "bad"

    never = client.post("/feedback", headers=FEEDBACK, json={"request_id": OLD_ID, "outcome": "bad"})
    assert never.status_code == 404 and never.json()["status"] == "unknown"
    bad_value = client.post("/feedback", headers=FEEDBACK, json={"request_id": q["request_id"], "outcome": "maybe"})
    assert bad_value.status_code == 400 and "good" in bad_value.json()["error"]
    missing = client.post("/feedback", headers=FEEDBACK, json={"request_id": q["request_id"]})
    assert missing.status_code == 400 and "outcome" in missing.json()["error"]


def test_feedback_needs_its_token(client, answered) -> None:
    body = {"request_id": answered[12][1]["request_id"], "outcome": "good"}
    assert client.post("/feedback", json=body).status_code == 401
    wrong = client.post("/feedback", headers={"Authorization": "Bearer nope"}, json=body)
    assert wrong.status_code == 401 and "MLGUARD_FEEDBACK_TOKEN" in wrong.json()["error"]
    # the monitoring token reads, it does not label
    assert client.post("/feedback", headers=READ, json=body).status_code == 401
    assert client.get(f"/predictions/{body['request_id']}").status_code == 401


def test_batch_feedback_lists_each_id(client, answered) -> None:
    ids = [p["request_id"] for _, p in answered[13:18]]
    for request_id in ids:
        logged(client, request_id)
    r = client.post("/feedback", headers=FEEDBACK, json={"outcomes": [
        *({"request_id": i, "outcome": "good"} for i in ids), {"request_id": OLD_ID, "outcome": "good"},
    ]})
    assert r.status_code == 200
    assert r.json()["counts"]["recorded"] == 5 and r.json()["counts"]["unknown"] == 1
    statuses = {x["request_id"]: x["status"] for x in r.json()["results"]}
    assert statuses[OLD_ID] == "unknown" and {statuses[i] for i in ids} == {"recorded"}


def test_too_many_outcomes_are_refused_whole(client, answered) -> None:
    limit = 1000  # server.max_batch_size in the shared server's config
    body = {"outcomes": [{"request_id": answered[20][1]["request_id"], "outcome": "good"}] * (limit + 1)}
    r = client.post("/feedback", headers=FEEDBACK, json=body)
    assert r.status_code == 400 and "limit of 1000" in r.json()["error"]
    assert logged(client, answered[20][1]["request_id"])["outcome"] is None


def test_an_id_just_issued_is_accepted_and_joined(client) -> None:
    """Feedback racing the write buffer: accepted at once (200, or 202 while the row is still
    buffered), never refused, and joined when the row lands."""
    before = scrape(client.base_url.__str__().rstrip("/"))
    p = client.post("/predict", json=held_out_rows(1)[0]).json()
    r = client.post("/feedback", headers=FEEDBACK, json={"request_id": p["request_id"], "outcome": "good"})
    assert r.status_code in (200, 202), r.text
    assert logged(client, p["request_id"])["outcome"] == "good"
    after = scrape(client.base_url.__str__().rstrip("/"))
    accepted = sum(total(after, "mlguard_feedback_total", outcome=o) - total(before, "mlguard_feedback_total", outcome=o)
                   for o in ("recorded", "pending"))
    assert accepted == 1


def test_an_unissued_recent_id_is_pending_then_forgotten(client) -> None:
    """A well-formed id from this minute that no worker issued is accepted as pending (its row
    could still be in a buffer); it never joins a prediction, so no record appears."""
    request_id = new_request_id()
    r = client.post("/feedback", headers=FEEDBACK, json={"request_id": request_id, "outcome": "good"})
    assert r.status_code == 202 and r.json()["status"] == "pending"
    time.sleep(1.5)  # longer than a flush interval
    assert client.get(f"/predictions/{request_id}", headers=READ).status_code == 404


def test_prediction_log_counts_every_answer(client, server) -> None:
    """Nothing is lost: after the buffers drain, written + dropped equals the answers given."""
    client.post("/predict_batch", json={"applications": held_out_rows(30)}).raise_for_status()

    def drained() -> bool:
        m = scrape(server.url)
        answered = total(m, "mlguard_requests_total")
        logged_rows = total(m, "mlguard_prediction_log_rows_total")
        return total(m, "mlguard_prediction_log_buffer_rows") == 0 and logged_rows == answered

    assert wait_until(drained, 10), scrape(server.url)
    assert total(scrape(server.url), "mlguard_store_up") == 1


def test_delete_needs_the_admin_token(client, answered) -> None:
    request_id = answered[21][1]["request_id"]
    r = client.delete(f"/predictions/{request_id}", headers=READ)
    assert r.status_code == 403 and "MLGUARD_ADMIN_TOKEN" in r.json()["error"]  # none on this server
    assert logged(client, request_id)["request_id"] == request_id
