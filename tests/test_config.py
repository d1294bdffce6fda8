"""Config: validation names the key, the environment overrides the file, reload keeps the last good."""
from __future__ import annotations

from pathlib import Path

import pytest

from service.worker.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    config_path,
    load,
    parse,
)
from service.worker.config_store import ConfigStore

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


def test_an_empty_file_read_mid_write_is_not_every_default(tmp_path: Path) -> None:
    """A poll between a writer's truncate and its write reads nothing: that must not flip the
    service to the defaults (routing.mode auto, no model.tag) until the full file lands."""
    path = tmp_path / "mlguard.yaml"
    path.write_text("routing:\n  mode: fallback\nmodel:\n  tag: credit_risk:v1\n")
    store = ConfigStore(path)
    changes: list[Settings] = []
    store.subscribe(lambda old, new: changes.append(new))
    for blank in ("", "\n  \n"):
        path.write_text(blank)
        assert store.reload_if_changed() is False
        assert store.current.routing.mode == "fallback" and store.current.model.tag == "credit_risk:v1"
    path.write_text("routing:\n  mode: fallback\nmodel:\n  tag: credit_risk:v2\n")
    assert store.reload_if_changed() is True and [c.model.tag for c in changes] == ["credit_risk:v2"]
    path.write_text("{}\n")  # every default, asked for
    assert store.reload_if_changed() is True and store.current.routing.mode == "auto"


def test_watcher_thread_picks_up_edits_and_stops(tmp_path: Path) -> None:
    import time

    path = tmp_path / "mlguard.yaml"
    path.write_text("reload:\n  interval_s: 0.05\n")
    store = ConfigStore(path)
    store.start()
    thread = store._loop._thread
    assert thread is not None and thread.is_alive()
    try:
        path.write_text("reload:\n  interval_s: 0.05\nrouting:\n  mode: fallback\n")
        deadline = time.monotonic() + 3
        while store.current.routing.mode != "fallback" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.current.routing.mode == "fallback"
    finally:
        store.stop()
    assert not thread.is_alive() and store._loop.stopped


def test_safe_default_answer_is_checked_against_the_plug_ins_task() -> None:
    from apps.credit.app import CREDIT_APP

    assert parse("").safe_default.answer is None  # null: the plug-in's own safe default
    CREDIT_APP.check_settings(parse(""))
    CREDIT_APP.check_settings(parse("safe_default:\n  answer: good\n"))
    with pytest.raises(ValueError, match=r"safe_default\.answer: .*one of the classes"):
        CREDIT_APP.check_settings(parse("safe_default:\n  answer: decline\n"))  # a decision word


def test_config_path_env_then_the_plug_ins_own_then_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MLGUARD_CONFIG", raising=False)
    assert config_path() == DEFAULT_CONFIG_PATH
    assert config_path("no_such_plug_in") == DEFAULT_CONFIG_PATH
    own = sorted(p for p in DEFAULT_CONFIG_PATH.parent.glob("*.yaml") if p != DEFAULT_CONFIG_PATH)
    for path in own:  # a plug-in with a config/<name>.yaml of its own reads it
        assert config_path(path.stem) == path
    monkeypatch.setenv("MLGUARD_CONFIG", str(tmp_path / "x.yaml"))
    assert config_path("no_such_plug_in") == tmp_path / "x.yaml"
