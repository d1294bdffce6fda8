"""The servers a run compares, the guarded one's configurations, and memory.

Six servers: bare BentoML, BentoML with its adaptive batching (the peer of mlguard's
micro-batching), the guarded service, the guarded service with drift monitoring switched from the
shipped default (for the drift on/off pair), and the shipped configuration with and without the
prediction log (`default` and `store_off`). The other guarded scenarios (model path, forced
heuristic, micro-batching, batch) are hot-reloaded configurations of the one guarded server rather
than servers of their own: the same process answers every one of them (no difference in heap or
placement). A pair whose two sides run side by side, request by request (bench/run.py), needs two
servers. `default` has one of its own, fresh like `store_off`, for a second reason: the guarded
server's prediction log fills with every other scenario's rows (batch alone writes a hundred a
request), and the store pair would compare a log of millions of rows against none.
"""
from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import httpx
import psutil
import yaml

from service.worker.config import DEFAULT_CONFIG_PATH, Settings
from tests.support.server import ServerProcess

BARE_TARGET = "bench.bare_service:BareCreditService"
ADAPTIVE_TARGET = "bench.bare_service:BareAdaptiveService"


def _base(model_concurrency: int) -> dict:
    """A deadline far above any queueing this machine produces and as many model slots as the
    highest concurrency, so the model path is what is measured, not timeouts or overload (which
    route to the rules). Config polled every 0.25 s, so switching scenarios waits less."""
    return {
        "model": {"timeout_ms": 10000, "max_concurrency": model_concurrency, "micro_batching": False},
        "reload": {"interval_s": 0.25},
    }


def configurations(model_concurrency: int) -> dict[str, dict]:
    """Config overrides of each scenario hot-reloaded on the guarded server, on top of
    config/mlguard.yaml."""
    base = _base(model_concurrency)
    return {
        "guarded": base,
        "heuristic": {**base, "routing": {"mode": "fallback"}},
        "micro_batching": {"model": {**base["model"], "micro_batching": True}},
    }


def shipped_servers(model_concurrency: int) -> dict[str, dict]:
    """Config overrides of the two servers running the shipped configuration as a user runs it
    (deadline, model slots, micro-batching, drift, logging all as shipped), with the prediction log
    (`default`) and without (`store_off`: store.enabled is a restart key). Only the reload poll, which
    does nothing per request, is the bench's."""
    reload = _base(model_concurrency)["reload"]
    return {"default": {"reload": reload}, "store_off": {"reload": reload, "store": {"enabled": False}}}


def drift_sides() -> tuple[str, str]:
    """(drift on, drift off): the guarded scenario runs the shipped default and stands for that side;
    the drift server (named after its side) runs the other."""
    return ("guarded", "drift_off") if Settings().drift.enabled else ("drift_on", "guarded")


def drift_server(model_concurrency: int) -> tuple[str, dict]:
    """The drift server's scenario name and config overrides."""
    on, off = drift_sides()
    name = off if on == "guarded" else on
    return name, {**_base(model_concurrency), "drift": {"enabled": name == on}}


def config_text(overrides: dict) -> str:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    for section, keys in overrides.items():
        data.setdefault(section, {}).update(keys)
    return yaml.safe_dump(data, sort_keys=False)


def start_servers(workers: int, model_concurrency: int, root: Path) -> dict[str, ServerProcess]:
    """Start all servers at once (startup is mostly waiting); stop them all if one fails."""
    drift_name, drift_overrides = drift_server(model_concurrency)
    guarded = {
        "guarded": configurations(model_concurrency)["guarded"],
        drift_name: drift_overrides,
        **shipped_servers(model_concurrency),
    }
    bare_env = {"BARE_WORKERS": str(workers)}
    procs = {
        "bare": ServerProcess(target=BARE_TARGET, workdir=root / "bare", workers=workers, env=bare_env),
        "adaptive": ServerProcess(
            target=ADAPTIVE_TARGET, workdir=root / "adaptive", workers=workers, env=bare_env
        ),
        **{
            name: ServerProcess(workdir=root / name, workers=workers, config_text=config_text(overrides))
            for name, overrides in guarded.items()
        },
    }
    with ThreadPoolExecutor(len(procs)) as pool:
        futures = [pool.submit(p.start, 180) for p in procs.values()]
        errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        stop_all(procs)
        raise errors[0]
    try:
        for name in guarded:
            wait_for_drift_process(procs[name])
        for p in procs.values():
            wait_quiet(p)
    except TimeoutError:
        stop_all(procs)
        raise
    return procs


def wait_for_drift_process(server: ServerProcess, timeout_s: float = 180) -> None:
    """/readyz answers before the drift process has imported evidently (tens of CPU seconds here);
    measuring then would bill that start-up to the first scenarios."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/monitoring/drift", timeout=10).status_code == 200:
            return
        time.sleep(0.5)
    raise TimeoutError(f"drift process not up after {timeout_s}s")


def wait_quiet(server: ServerProcess, cpu_share: float = 0.1, timeout_s: float = 60) -> None:
    """Until the server's processes together use under `cpu_share` of a core for a second."""
    deadline = time.monotonic() + timeout_s
    before = sum(cpu_seconds(server.proc.pid).values())
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = sum(cpu_seconds(server.proc.pid).values())
        if now - before < cpu_share:
            return
        before = now
    raise TimeoutError(f"server still busy after {timeout_s}s")


def stop_all(procs: dict[str, ServerProcess]) -> None:
    with ThreadPoolExecutor(len(procs)) as pool:
        list(pool.map(lambda p: p.stop(), procs.values()))


def apply_config(server: ServerProcess, text: str, workers: int, timeout_s: float = 30) -> None:
    """Write the config and wait until every worker reports its version (GET /admin/state)."""
    server.config_path.write_text(text)
    want = hashlib.sha256(text.encode()).hexdigest()[:12]  # as service/worker/config_store.py digests it
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/admin/state", timeout=5).json()
        if state["config_version"] == want:
            seen.add(state["worker_pid"])
            if len(seen) >= workers:
                return
        time.sleep(0.1)
    raise TimeoutError(f"workers did not reload the config within {timeout_s}s")


def role(proc: psutil.Process) -> str:
    """arbiter (`bentoml serve` itself), worker (an API worker) or drift (the drift process)."""
    cmd = " ".join(proc.cmdline())
    if "--worker-id" not in cmd:
        return "arbiter"
    return "drift" if "_drift " in cmd else "worker"


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) used so far by a server's processes, summed per role."""
    by_role: dict[str, float] = {}
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t, r = p.cpu_times(), role(p)
            except psutil.NoSuchProcess:
                continue
            by_role[r] = by_role.get(r, 0.0) + t.user + t.system
    except psutil.NoSuchProcess:
        pass
    return by_role


class PeakMemory:
    """Samples each server's process tree in a thread; keeps the peak RSS per role and in total.

    `worker` is the largest API worker: the guard's cost per worker is guarded minus bare there.
    """

    def __init__(self, procs: dict[str, ServerProcess], interval_s: float = 0.25) -> None:
        self._pids = {name: p.proc.pid for name, p in procs.items()}
        self.peak: dict[str, dict[str, int]] = {name: {} for name in self._pids}
        self.start = {name: self._sample(pid) for name, pid in self._pids.items()}  # before any load
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self, pid: int) -> dict[str, int]:
        by_role: dict[str, int] = {"total": 0}
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                try:
                    rss, r = p.memory_info().rss, role(p)
                except psutil.NoSuchProcess:
                    continue
                by_role[r] = max(by_role.get(r, 0), rss)
                by_role["total"] += rss
        except psutil.NoSuchProcess:
            pass
        return by_role

    def _run(self) -> None:
        while True:
            for name, pid in self._pids.items():
                for r, rss in self._sample(pid).items():
                    self.peak[name][r] = max(self.peak[name].get(r, 0), rss)
            if self._stop.wait(self._interval_s):
                return
