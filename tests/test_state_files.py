"""The workers' shared state files written by several processes at once: each change is read,
applied and rewritten under the file's lock, so none is lost. Real processes (spawned), one
state folder, as the API workers of one instance share it."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

from service.worker.admin_state import AdminStateStore
from service.worker.model_memory import ModelMemory

WRITERS = 3
CHANGES = 20  # each; 3 x 20 = 60 stays within the admin file's 100 kept changes


def _change_modes(folder: str, writer: int) -> None:
    store = AdminStateStore(Path(folder))
    for i in range(CHANGES):
        store.set_mode("fallback" if i % 2 else "auto", f"writer-{writer}", reason=f"{writer}-{i}")


def _mark_bad(folder: str, writer: int) -> None:
    memory = ModelMemory(Path(folder))
    memory.for_tag("m:latest")
    for i in range(CHANGES):
        memory.mark_bad(f"m:{writer}-{i}", "rolled back")


def _run_at_once(target, folder: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=target, args=(str(folder), w)) for w in range(WRITERS)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0


def test_no_admin_change_is_lost_from_the_history(tmp_path: Path) -> None:
    _run_at_once(_change_modes, tmp_path)
    reasons = {entry.reason for entry in AdminStateStore(tmp_path).history(limit=1000)}
    assert reasons == {f"{w}-{i}" for w in range(WRITERS) for i in range(CHANGES)}


def test_no_rolled_back_version_is_forgotten(tmp_path: Path) -> None:
    _run_at_once(_mark_bad, tmp_path)
    memory = ModelMemory(tmp_path)
    assert memory.current.tag == "m:latest"
    assert set(memory.current.bad) == {f"m:{w}-{i}" for w in range(WRITERS) for i in range(CHANGES)}
