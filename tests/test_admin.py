"""The admin API over real HTTP: state, the bearer token, every worker, a restart, the history.

Here the override lives in the single-instance file (no PostgreSQL store.url);
tests/test_fleet_override.py covers the override shared through PostgreSQL."""
from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import wait_until
from tests.support.data import GOOD_ROW
from tests.support.metrics import scrape, total
from tests.support.server import ServerProcess

TOKEN = "test-admin-token-8f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Drift only alerts, as on the session server: these tests replay one row.
ENV = {"MLGUARD_ADMIN_TOKEN": TOKEN, "MLGUARD_DRIFT__ACTION": "alert"}


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """Two workers with an admin token: the session server has none (writes disabled)."""
    proc = ServerProcess(
        workdir=tmp_path_factory.mktemp("admin"), workers=2, env=ENV
    ).start()
    yield proc
    proc.stop()


def _state(server: ServerProcess) -> dict:
    r = httpx.get(f"{server.url}/admin/state", timeout=10)  # a fresh connection: any worker
    assert r.status_code == 200, r.text
    return r.json()


def _route_to(server: ServerProcess, mode: str, **said: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/admin/routing", json={"mode": mode, **said}, headers=AUTH, timeout=10
    )


def _history(server: ServerProcess, query: str = "", headers: dict | None = None) -> httpx.Response:
    return httpx.get(f"{server.url}/admin/routing/history{query}",
                     headers=AUTH if headers is None else headers, timeout=10)


def _every_worker_reports(server: ServerProcess, admin_mode: str | None, timeout_s: float = 15) -> bool:
    seen: set[int] = set()

    def check() -> bool:
        state = _state(server)
        if state["mode"]["admin"] == admin_mode:
            seen.add(state["worker_pid"])
        return len(seen) == server.workers

    return wait_until(check, timeout_s, interval_s=0.05)


def test_state_shows_mode_circuit_drift_faults_and_config_version(server: ServerProcess) -> None:
    state = _state(server)
    assert state["mode"]["effective"] == "auto" and state["mode"]["config"] == "auto"
    assert state["circuit"]["state"] in ("closed", "half_open", "open")
    assert isinstance(state["drift"]["active"], bool)
    assert state["faults"]["active"] is False and state["faults"]["model_error_ratio"] == 0.0
    assert len(state["config_version"]) == 12
    assert isinstance(state["worker_pid"], int)


def test_writes_are_disabled_without_a_configured_token(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": "Bearer"}):
        r = httpx.post(f"{server.url}/admin/routing", json={"mode": "fallback"}, headers=headers)
        assert r.status_code == 403, r.text
        assert "MLGUARD_ADMIN_TOKEN" in r.json()["error"]
    assert _state(server)["mode"]["admin"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},  # a prefix of the right token
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},  # the right secret under the wrong scheme
        {"Authorization": TOKEN},
    ],
)
def test_missing_or_wrong_token_is_401(admin_server: ServerProcess, headers: dict) -> None:
    r = httpx.post(f"{admin_server.url}/admin/routing", json={"mode": "fallback"}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert _state(admin_server)["mode"]["admin"] is None


@pytest.mark.parametrize("body", [b'{"mode": "sideways"}', b'{"mode": 1}', b"not json", b"{}"])
def test_bad_body_is_400(admin_server: ServerProcess, body: bytes) -> None:
    r = httpx.post(f"{admin_server.url}/admin/routing", content=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert "mode" in r.json()["error"]


@pytest.mark.parametrize(
    ("said", "field"),
    [({"actor": "a" * 101}, "actor"), ({"reason": "r" * 501}, "reason"), ({"actor": 7}, "actor"),
     ({"who": "alice"}, "who")],
)
def test_actor_and_reason_are_bounded_strings(
    admin_server: ServerProcess, said: dict, field: str
) -> None:
    r = _route_to(admin_server, "fallback", **said)
    assert r.status_code == 400, r.text
    assert f"{field}: " in r.json()["error"]
    assert _state(admin_server)["mode"]["admin"] is None  # nothing changed


def test_history_needs_the_admin_token(server: ServerProcess, admin_server: ServerProcess) -> None:
    assert _history(server).status_code == 403  # no token configured: disabled
    assert _history(admin_server, headers={}).status_code == 401
    assert _history(admin_server, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for bad in ("?limit=0", "?limit=1001", "?limit=ten"):
        r = _history(admin_server, bad)
        assert r.status_code == 400 and "limit" in r.json()["error"], (bad, r.text)


def test_get_only_state_and_post_only_routing(admin_server: ServerProcess) -> None:
    assert httpx.post(f"{admin_server.url}/admin/state", headers=AUTH).status_code == 405
    assert httpx.get(f"{admin_server.url}/admin/routing", headers=AUTH).status_code == 405


def test_fallback_reaches_every_worker_is_logged_and_survives_a_restart(
    admin_server: ServerProcess,
) -> None:
    assert _history(admin_server).json() == {"app": "credit_risk", "changes": []}
    before = time.time()
    r = _route_to(admin_server, "fallback", actor="alice", reason="release 42 misbehaves")
    assert r.status_code == 200, r.text
    assert r.json()["mode"]["effective"] == "fallback"
    assert r.json()["mode"]["admin_changed_by"] == "127.0.0.1"
    change = r.json()["change"]
    assert (change["mode"], change["actor"], change["source"], change["reason"]) == (
        "fallback", "alice", "127.0.0.1", "release 42 misbehaves")
    assert before <= change["changed_at"] <= time.time()
    assert _every_worker_reports(admin_server, "fallback")
    answer = httpx.post(f"{admin_server.url}/predict", json=GOOD_ROW).json()
    assert answer["route"] == "heuristic" and answer["reasons"] == ["admin.forced"]
    assert ("admin routing override None -> fallback by 127.0.0.1 "
            "(actor 'alice', reason 'release 42 misbehaves')") in admin_server.log_text()
    # The dashboard's "routing mode" shows the mode in force, override included, in every worker.
    samples = scrape(admin_server.url)
    assert total(samples, "mlguard_routing_mode", mode="fallback") == 1
    assert total(samples, "mlguard_routing_mode", mode="auto") == 0

    admin_server.stop()
    again = ServerProcess(workdir=admin_server.workdir, workers=2, env=ENV)
    again.start()
    try:
        assert _every_worker_reports(again, "fallback")
        assert httpx.post(f"{again.url}/predict", json=GOOD_ROW).json()["reasons"] == ["admin.forced"]
        assert _route_to(again, "auto").status_code == 200  # actor and reason are optional
        assert _every_worker_reports(again, "auto")
        assert httpx.post(f"{again.url}/predict", json=GOOD_ROW).json()["route"] == "model"
        assert "admin routing override fallback -> auto by 127.0.0.1" in again.log_text()
        assert "auto by 127.0.0.1 (actor" not in again.log_text()  # nothing said, none logged
        # The file keeps the history across the restart: newest first, `limit` honoured.
        changes = _history(again).json()["changes"]
        assert [(c["mode"], c["actor"], c["reason"], c["source"]) for c in changes] == [
            ("auto", None, None, "127.0.0.1"),
            ("fallback", "alice", "release 42 misbehaves", "127.0.0.1"),
        ]
        assert changes[0]["changed_at"] > changes[1]["changed_at"] == change["changed_at"]
        assert _history(again, "?limit=1").json()["changes"] == changes[:1]
    finally:
        again.stop()


def test_state_file_is_shared_through_the_watcher_and_bad_edits_are_ignored(tmp_path) -> None:
    """Two stores on one directory stand for two workers (no server needed)."""
    from service.worker.admin_state import AdminStateStore

    writer, reader = AdminStateStore(tmp_path), AdminStateStore(tmp_path)
    assert reader.watched.poll() and reader.current.mode is None  # no file: no override
    writer.set_mode("fallback", "10.0.0.7")
    assert reader.watched.poll()
    assert (reader.current.mode, reader.current.changed_by) == ("fallback", "10.0.0.7")
    assert not reader.watched.poll()  # unchanged file: nothing to do

    writer.path.write_text('{"mode": "sideways"}')  # a hand edit gone wrong
    assert reader.watched.poll() and reader.current.mode == "fallback"
    writer.path.write_text("{not json")
    assert reader.watched.poll() and reader.current.mode == "fallback"

    writer.path.unlink()  # deleting the file removes the override
    assert reader.watched.poll() and reader.current.mode is None
    with pytest.raises(ValueError):
        writer.set_mode("sideways", "10.0.0.7")


def test_a_poll_that_read_the_file_just_before_a_change_does_not_undo_it(tmp_path) -> None:
    """The watcher thread reads the file, this worker's request then sets a new mode: the text
    read before must not put the old mode back (it did, until the next poll)."""
    from service.worker.admin_state import AdminStateStore

    store = AdminStateStore(tmp_path)
    store.set_mode("auto", "10.0.0.7")
    real = store.watched.path

    class ReadThenChange:
        """The file as the watcher reads it, with a change landing right after the read."""

        def read_text(self) -> str:
            text = real.read_text()
            store.set_mode("fallback", "10.0.0.8")
            return text

    store.watched.path = ReadThenChange()
    store.watched.poll()
    assert (store.current.mode, store.current.changed_by) == ("fallback", "10.0.0.8")


def test_the_file_keeps_a_short_history_and_loads_files_written_before_it(tmp_path) -> None:
    from service.worker.admin_state import FILE_HISTORY, AdminStateStore

    store = AdminStateStore(tmp_path)
    assert store.history() == []
    # A file written by an mlguard without actor, reason and history still loads.
    store.path.write_text('{"mode": "fallback", "changed_by": "10.0.0.1", "changed_at": 1.0}')
    assert store.watched.poll() and store.current.mode == "fallback"
    assert store.current.actor is None and store.history() == []

    for i in range(FILE_HISTORY + 5):
        store.set_mode(("auto", "fallback")[i % 2], f"10.0.0.{i % 250}", actor=f"op{i}")
    kept = store.history(limit=1000)
    assert len(kept) == FILE_HISTORY  # the oldest fall off: the file stays a few KB
    assert [c.actor for c in kept[:2]] == [f"op{FILE_HISTORY + 4}", f"op{FILE_HISTORY + 3}"]
    assert kept[-1].actor == "op5"
    assert store.history(limit=3) == kept[:3]
    assert store.path.stat().st_size < 20_000

    store.path.write_text('{"mode": "auto", "history": "not a list"}')  # a hand edit gone wrong
    assert store.history() == []
    store.set_mode("fallback", "10.0.0.9", reason="after a bad edit")  # starts a new history
    assert [c.reason for c in store.history()] == ["after a bad edit"]


def test_an_unwritable_state_dir_changes_nothing(tmp_path) -> None:
    from service.worker.admin_state import AdminStateStore, AdminStateUnavailable

    (tmp_path / "not_a_dir").write_text("")
    store = AdminStateStore(tmp_path / "not_a_dir")
    with pytest.raises(AdminStateUnavailable, match="not written"):  # the API answers 503
        store.set_mode("fallback", "10.0.0.7")
    assert store.current.mode is None
