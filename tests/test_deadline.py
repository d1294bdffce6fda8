"""The model deadline and bounded concurrency over real HTTP (session server, config reloads).

The circuit breaker is off here so that each behaviour is seen on its own (timeouts would open
it), and micro-batching is off so that each request is exactly one model call.
"""
from __future__ import annotations

import time

import httpx
import yaml

from tests.conftest import wait_until
from tests.support.data import GOOD_ROW
from tests.support.metrics import scrape, total

SLOW_MS = 5000


def _config(server, timeout_ms: float, max_concurrency: int) -> str:
    config = yaml.safe_load(server.config_path.read_text())
    config["model"].update(timeout_ms=timeout_ms, max_concurrency=max_concurrency, micro_batching=False)
    config["faults"].update(model_delay_ms=SLOW_MS, model_delay_ratio=1.0)
    config.setdefault("circuit", {})["enabled"] = False
    return yaml.safe_dump(config)


def _reasons(client: httpx.Client) -> list[str]:
    r = client.post("/predict", json=GOOD_ROW)
    assert r.status_code == 200, r.text
    return r.json()["reasons"]


def test_a_model_call_past_the_deadline_is_abandoned_for_the_rules(server, edit_config) -> None:
    edit_config(_config(server, timeout_ms=100, max_concurrency=64))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert wait_until(lambda: _reasons(client) == ["model.timeout"], 10)
        started = time.monotonic()
        r = client.post("/predict", json=GOOD_ROW)
        waited = time.monotonic() - started
    body = r.json()
    assert body["route"] == "heuristic" and body["reasons"] == ["model.timeout"] and body["rules"]
    # Not a speed check: had the deadline not abandoned the call, the answer would take 5 s.
    assert waited < SLOW_MS / 1000
    assert total(scrape(server.url), "mlguard_requests_total", reason="model.timeout") >= 1


def test_abandoned_calls_hold_their_slots_so_the_next_rows_are_overloaded_not_queued(
    server, edit_config
) -> None:
    edit_config(_config(server, timeout_ms=100, max_concurrency=1))
    # One connection, so one worker: its single slot is held by the abandoned 5 s call.
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert wait_until(lambda: _reasons(client) == ["model.overloaded"], 10)
        overloaded = [_reasons(client) for _ in range(5)]
    assert overloaded == [["model.overloaded"]] * 5
    assert total(scrape(server.url), "mlguard_requests_total", reason="model.overloaded") >= 5


def test_a_fast_model_is_called_inline_until_a_fault_drill_starts(server, edit_config) -> None:
    # The most generous limit: the model's ~0.01 ms must qualify on a loaded machine too, whose
    # scheduler can stretch a call's wall time past the default 1 ms (this is no speed check).
    config = yaml.safe_load(server.config_path.read_text())
    config["model"]["inline_max_ms"] = 50.0
    edit_config(yaml.safe_dump(config))
    # One connection keeps talking to one worker, whose state GET /admin/state then shows.
    with httpx.Client(base_url=server.url, timeout=30) as client:

        def qualified() -> bool:
            for _ in range(25):  # a version qualifies after 100 calls within the limit (InlinePolicy)
                assert client.post("/predict", json=GOOD_ROW).json()["route"] == "model"
            return client.get("/admin/state").json()["model"]["inline"] is True

        assert wait_until(qualified, 30)
        config = yaml.safe_load(server.config_path.read_text())
        config["faults"].update(model_delay_ms=1, model_delay_ratio=1.0)
        edit_config(yaml.safe_dump(config))
        # The drill's delays must never block the event loop: every call goes to a thread.
        assert wait_until(lambda: client.get("/admin/state").json()["model"]["inline"] is False, 10)
        assert client.post("/predict", json=GOOD_ROW).json()["route"] == "model"
