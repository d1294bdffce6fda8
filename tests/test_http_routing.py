"""Every routing behaviour of the pipeline, over real HTTP against the two-worker server."""
from __future__ import annotations

import httpx
import pytest
import yaml

from tests.conftest import wait_until
from tests.support.data import GOOD_ROW
from tests.support.metrics import scrape, total


def predict(client: httpx.Client, row: dict) -> dict:
    r = client.post("/predict", json=row)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"age": "thirty"}, "age"),
        ({"seniority": 1.5}, "seniority"),
        ({"records": "maybe"}, "records"),
        ({"income": -5}, "income"),
        ({"amount": None}, "amount"),
        ({"nickname": "bob"}, "nickname"),
    ],
)
def test_schema_errors_are_400_naming_the_field(client: httpx.Client, change: dict, field: str) -> None:
    r = client.post("/predict", json={**GOOD_ROW, **change})
    assert r.status_code == 400
    assert field in [str(part) for err in r.json()["detail"] for part in err["loc"]]


def test_missing_field_is_400_naming_it(client: httpx.Client) -> None:
    row = dict(GOOD_ROW)
    del row["price"]
    r = client.post("/predict", json=row)
    assert r.status_code == 400
    assert r.json()["detail"][0]["loc"] == ["price"] and r.json()["detail"][0]["type"] == "missing"


def test_nullable_fields_may_be_null(client: httpx.Client) -> None:
    row = {**GOOD_ROW, **{k: None for k in ("income", "assets", "debt", "home", "marital", "job")}}
    assert predict(client, row)["route"] == "model"


def test_out_of_range_value_goes_to_the_rules(client: httpx.Client) -> None:
    body = predict(client, {**GOOD_ROW, "age": 140})
    assert body["route"] == "heuristic"
    assert body["reasons"] == ["input.out_of_range:age"] and body["rules"]


def test_unknown_category_goes_to_the_rules(client: httpx.Client) -> None:
    body = predict(client, {**GOOD_ROW, "home": "castle"})
    assert body["route"] == "heuristic" and body["reasons"] == ["input.unknown_category:home"]


def test_batch_rows_are_routed_on_their_own_and_in_order(client: httpx.Client) -> None:
    rows = [GOOD_ROW, {**GOOD_ROW, "age": 140}, {**GOOD_ROW, "job": "pilot"}, GOOD_ROW]
    r = client.post("/predict_batch", json={"applications": rows})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [p["route"] for p in got] == ["model", "heuristic", "heuristic", "model"]
    assert got[0]["probability"] == got[3]["probability"]
    assert got[2]["reasons"] == ["input.unknown_category:job"]


def test_batch_errors_name_the_row_and_field(client: httpx.Client) -> None:
    r = client.post("/predict_batch", json={"applications": [GOOD_ROW, {**GOOD_ROW, "time": "long"}]})
    assert r.status_code == 400
    assert r.json()["detail"][0]["loc"][:3] == ["applications", 1, "time"]
    assert client.post("/predict_batch", json={"applications": []}).status_code == 400
    assert client.post("/predict_batch", json={"rows": [GOOD_ROW]}).status_code == 400


def _all_answers(client: httpx.Client, check, n: int = 12) -> bool:
    return all(check(predict(client, GOOD_ROW)) for _ in range(n))


def _reloads(server, outcome: str) -> float:
    return total(scrape(server.url), "mlguard_config_reloads_total", outcome=outcome)


def test_batch_over_the_configured_maximum_is_400(client, server, edit_config) -> None:
    edit_config(server.config_path.read_text().replace("max_batch_size: 1000", "max_batch_size: 3"))
    assert wait_until(
        lambda: client.post("/predict_batch", json={"applications": [GOOD_ROW] * 4}).status_code == 400,
        5,
    )
    r = client.post("/predict_batch", json={"applications": [GOOD_ROW] * 4})
    assert "applications" in r.json()["error"] and "3" in r.json()["error"]
    assert client.post("/predict_batch", json={"applications": [GOOD_ROW] * 3}).status_code == 200


def test_config_edit_forces_fallback_in_every_worker_within_5s(client, server, edit_config) -> None:
    before = _reloads(server, "success")
    edit_config(server.config_path.read_text().replace("mode: auto", "mode: fallback"))
    # Both workers count their own reload: the sum rises by the number of workers.
    assert wait_until(lambda: _reloads(server, "success") >= before + server.workers, 5)
    assert _all_answers(client, lambda b: b["route"] == "heuristic" and b["reasons"] == ["config.forced"])
    mode = scrape(server.url)
    assert total(mode, "mlguard_routing_mode", mode="fallback") == 1


def test_invalid_config_edit_is_rejected_and_the_last_good_stays(client, server, edit_config) -> None:
    before = _reloads(server, "failure")
    edit_config(server.config_path.read_text().replace("mode: auto", "mode: sideways"))
    assert wait_until(lambda: _reloads(server, "failure") >= before + server.workers, 5)
    assert _all_answers(client, lambda b: b["route"] == "model")
    assert "config reload rejected" in server.log_text() and "routing.mode" in server.log_text()


def _with_faults(server, **faults: float) -> str:
    """The server's config with fault drills on and the circuit breaker off, so each drill is
    seen on its own and not as circuit.open after the previous test's failures."""
    config = yaml.safe_load(server.config_path.read_text())
    config["faults"].update(faults)
    config.setdefault("circuit", {})["enabled"] = False
    return yaml.safe_dump(config)


def test_model_errors_go_to_the_rules(client, server, edit_config) -> None:
    edit_config(_with_faults(server, model_error_ratio=1.0))
    assert wait_until(lambda: _all_answers(client, lambda b: b["reasons"] == ["model.error:InjectedFault"]), 5)
    assert predict(client, GOOD_ROW)["route"] == "heuristic"


def test_invalid_model_output_goes_to_the_rules(client, server, edit_config) -> None:
    edit_config(_with_faults(server, model_invalid_output_ratio=1.0))
    assert wait_until(lambda: _all_answers(client, lambda b: b["reasons"] == ["output.invalid:nan"]), 5)


def test_failing_rules_answer_the_safe_default(client, server, edit_config) -> None:
    text = _with_faults(server, heuristic_error_ratio=1.0).replace("mode: auto", "mode: fallback")
    assert "mode: fallback" in text
    edit_config(text)
    expected = ["config.forced", "heuristic.error:InjectedFault"]
    assert wait_until(lambda: _all_answers(client, lambda b: b["reasons"] == expected), 5)
    body = predict(client, GOOD_ROW)
    assert (body["route"], body["probability"], body["decision"]) == ("default", 1.0, "decline")
