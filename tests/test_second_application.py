"""The same layer serves a different plug-in: its schema, model, rules and batch key."""
from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.apps.train_machine_failure import train_if_missing
from tests.support.server import ServerProcess

READING = {"temperature": 70.0, "vibration": 3.0, "machine_type": "lathe", "hours_since_service": 500.0}


@pytest.fixture(scope="module")
def machine(tmp_path_factory) -> Iterator[httpx.Client]:
    train_if_missing()
    proc = ServerProcess(
        target="tests.apps.machine_service:MachineFailureService",
        workdir=tmp_path_factory.mktemp("machine"),
        env={"MLGUARD_DRIFT__ENABLED": "false"},
    ).start()
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        yield client
    proc.stop()


def test_clean_reading_is_scored_by_its_own_model(machine: httpx.Client) -> None:
    body = machine.post("/predict", json=READING).json()
    assert body["route"] == "model" and body["model_version"].startswith("machine_failure:")


def test_unknown_machine_type_goes_to_its_own_rules(machine: httpx.Client) -> None:
    body = machine.post("/predict", json={**READING, "machine_type": "robot", "vibration": 9.0}).json()
    assert body["route"] == "heuristic"
    assert body["reasons"] == ["input.unknown_category:machine_type"]
    assert body["rules"] == ["high_vibration"]


def test_its_schema_is_enforced(machine: httpx.Client) -> None:
    r = machine.post("/predict", json={**READING, "vibration": "loud"})
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["vibration"]


def test_its_batch_key_is_its_own(machine: httpx.Client) -> None:
    r = machine.post("/predict_batch", json={"readings": [READING, {**READING, "temperature": 390.0}]})
    assert r.status_code == 200, r.text
    routes = [p["route"] for p in r.json()["predictions"]]
    assert routes == ["model", "heuristic"]
    assert machine.post("/predict_batch", json={"applications": [READING]}).status_code == 400
