"""Config: validation names the key, the environment overrides the file, reload keeps the last good."""
from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, load, parse
from service.config_store import ConfigStore

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid_and_every_key_is_commented() -> None:
    settings = load(ROOT / "config" / "mlguard.yaml")
    assert settings.routing.mode == "auto"
    for line in (ROOT / "config" / "mlguard.yaml").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"uncommented key: {line}"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("routing:\n  mode: sideways\n", "routing.mode"),
        ("model:\n  timeout_ms: -5\n", "model.timeout_ms"),
        ("model:\n  timeot_ms: 5\n", "model.timeot_ms"),
        ("routng:\n  mode: auto\n", "routng"),
        ("routing: [\n", "YAML"),
    ],
)
def test_invalid_config_names_the_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse(text)


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLGUARD_ROUTING__MODE", "fallback")
    monkeypatch.setenv("MLGUARD_DECISION__THRESHOLD", "0.3")
    settings = parse("routing:\n  mode: auto\n")
    assert settings.routing.mode == "fallback" and settings.decision.threshold == 0.3


def test_reload_swaps_valid_edits_and_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "mlguard.yaml"
    path.write_text("routing:\n  mode: auto\n")
    store = ConfigStore(path)
    outcomes: list[str] = []
    changes: list[tuple[str, str]] = []
    store.on_reload_outcome(outcomes.append)
    store.subscribe(lambda old, new: changes.append((old.routing.mode, new.routing.mode)))

    assert store.reload_if_changed() is False  # unchanged file: nothing happens
    path.write_text("routing:\n  mode: fallback\n")
    assert store.reload_if_changed() is True and store.current.routing.mode == "fallback"
    path.write_text("routing:\n  mode: nonsense\n")
    assert store.reload_if_changed() is False and store.current.routing.mode == "fallback"
    assert store.reload_if_changed() is False  # the same bad text is not retried
    assert outcomes == ["success", "failure"] and changes == [("auto", "fallback")]


def test_watcher_thread_picks_up_edits_and_stops(tmp_path: Path) -> None:
    import time

    path = tmp_path / "mlguard.yaml"
    path.write_text("reload:\n  interval_s: 0.05\n")
    store = ConfigStore(path)
    store.start()
    try:
        path.write_text("reload:\n  interval_s: 0.05\nrouting:\n  mode: fallback\n")
        deadline = time.monotonic() + 3
        while store.current.routing.mode != "fallback" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.current.routing.mode == "fallback"
    finally:
        store.stop()
    assert store._thread is None
