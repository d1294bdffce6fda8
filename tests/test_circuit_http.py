"""The circuit breaker over real HTTP: a failing model opens it in every worker, a healed one closes it.

Each request opens a fresh connection, so both workers of the session server get traffic.
"""
from __future__ import annotations

import httpx
import yaml

from tests.conftest import wait_until
from tests.support.data import GOOD_ROW
from tests.support.metrics import scrape, total

SMALL_CIRCUIT = {
    "enabled": True, "window_size": 10, "min_calls": 5, "failure_ratio": 0.5,
    "open_s": 60.0, "half_open_probes": 2,
}


def _config(original: str, open_s: float = 60.0, **faults: float) -> str:
    config = yaml.safe_load(original)
    config["circuit"] = {**SMALL_CIRCUIT, "open_s": open_s}
    config["faults"].update(faults)
    return yaml.safe_dump(config)


def _predict(server) -> dict:
    r = httpx.post(f"{server.url}/predict", json=GOOD_ROW, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _first_reason(answer: dict) -> str:
    return answer["reasons"][0] if answer["reasons"] else ""


def _circuit_states(server) -> list[float]:
    return [v for (name, _), v in scrape(server.url).items() if name == "mlguard_circuit_state"]


def test_failing_model_opens_the_circuit_and_a_healed_one_closes_it(server, edit_config) -> None:
    original = server.config_path.read_text()
    before = scrape(server.url)
    opened_before = total(before, "mlguard_circuit_transitions_total", to="open")
    closed_before = total(before, "mlguard_circuit_transitions_total", to="closed")

    edit_config(_config(original, model_error_ratio=1.0))
    assert wait_until(lambda: _first_reason(_predict(server)) == "model.error:InjectedFault", 5)

    # Keep calling until every worker's circuit is open: the model is no longer called.
    def all_open() -> bool:
        _predict(server)
        states = _circuit_states(server)
        return len(states) == server.workers and all(s == 2 for s in states)

    assert wait_until(all_open, 20, interval_s=0.05)
    opened = _predict(server)
    assert opened["route"] == "heuristic" and opened["reasons"] == ["circuit.open"] and opened["rules"]
    state = httpx.get(f"{server.url}/admin/state", timeout=10).json()
    assert state["circuit"]["state"] == "open"
    after_open = scrape(server.url)
    assert total(after_open, "mlguard_circuit_transitions_total", to="open") >= opened_before + server.workers
    assert total(after_open, "mlguard_requests_total", route="heuristic", reason="circuit.open") >= 1

    # Heal the model and shorten open_s (a reload retunes an open circuit): the half-open probes
    # succeed and every circuit closes.
    edit_config(_config(original, open_s=0.5))

    def all_closed() -> bool:
        _predict(server)
        states = _circuit_states(server)
        return len(states) == server.workers and all(s == 0 for s in states)

    assert wait_until(all_closed, 30, interval_s=0.05)
    healed = scrape(server.url)
    assert total(healed, "mlguard_circuit_transitions_total", to="half_open") >= server.workers
    assert total(healed, "mlguard_circuit_transitions_total", to="closed") >= closed_before + server.workers
    assert _predict(server)["route"] == "model"
    assert "circuit breaker closed -> open" in server.log_text()


def test_disabled_circuit_never_opens(server, edit_config) -> None:
    config = yaml.safe_load(_config(server.config_path.read_text(), model_error_ratio=1.0))
    config["circuit"]["enabled"] = False
    edit_config(yaml.safe_dump(config))
    # Both workers have reloaded once ten answers in a row (fresh connections) are model errors.
    assert wait_until(
        lambda: all(_first_reason(_predict(server)) == "model.error:InjectedFault" for _ in range(10)), 10
    )
    answers = [_predict(server) for _ in range(30)]
    assert all(a["reasons"] == ["model.error:InjectedFault"] for a in answers)
    assert all(s == 0 for s in _circuit_states(server))
