"""Starting the service: an invalid config stops it naming the key; the environment overrides.
(A model that cannot be served: tests/test_model_refusals.py.)"""
from __future__ import annotations

import httpx
import pytest

from tests.support.data import GOOD_ROW
from tests.support.server import ServerProcess


def test_invalid_config_stops_the_service_naming_the_key(tmp_path) -> None:
    proc = ServerProcess(workdir=tmp_path, config_text="routing:\n  mode: sideways\n")
    with pytest.raises(RuntimeError) as failed:
        proc.start(timeout_s=60)
    proc.stop()
    assert proc.proc.returncode != 0
    assert "invalid config: routing.mode" in str(failed.value)


def test_environment_variable_overrides_the_file(tmp_path) -> None:
    proc = ServerProcess(workdir=tmp_path, env={"MLGUARD_ROUTING__MODE": "fallback"})
    try:
        proc.start()
        body = httpx.post(f"{proc.url}/predict", json=GOOD_ROW, timeout=30).json()
        assert body["route"] == "heuristic" and body["reasons"] == ["config.forced"]
    finally:
        proc.stop()


def test_a_safe_default_outside_the_plug_ins_classes_stops_the_service(tmp_path) -> None:
    proc = ServerProcess(workdir=tmp_path, config_text="safe_default:\n  answer: maybe\n")
    with pytest.raises(RuntimeError) as failed:
        proc.start(timeout_s=60)
    proc.stop()
    assert proc.proc.returncode != 0
    assert "safe_default.answer" in str(failed.value) and "one of the classes" in str(failed.value)

