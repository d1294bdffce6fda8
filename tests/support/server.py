"""Start and stop a real `bentoml serve` process for tests, benchmarks and demos."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).parent / "bentoml")
CREDIT_SERVICE = "apps.credit.app:CreditRiskService"


def shipped_config(edits: dict[str, str]) -> str:
    """config/mlguard.yaml with each text `old` replaced by `new` (first occurrence only). An edit
    that finds nothing raises: the shipped file changed under the caller."""
    text = (ROOT / "config" / "mlguard.yaml").read_text()
    for old, new in edits.items():
        if old not in text:
            raise ValueError(f"config/mlguard.yaml has no {old!r} to edit")
        text = text.replace(old, new, 1)
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live descendant of a process, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid is the 4th field after the parenthesised command name.
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class ServerProcess:
    """One `bentoml serve` on loopback, with its own config file and state directory.

    The owner must call stop(); it kills the whole process group, workers included.
    """

    def __init__(
        self,
        target: str = CREDIT_SERVICE,
        workdir: Path | None = None,
        workers: int = 1,
        config_text: str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.target = target
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir or Path(os.environ.get("TMPDIR", "/tmp")) / f"mlguard-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "mlguard.yaml"
        self.config_path.write_text(config_text or (ROOT / "config" / "mlguard.yaml").read_text())
        self.log_path = self.workdir / "server.log"
        self.workers = workers
        self.cwd = cwd
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "BENTOML_HOME": str(self.bentoml_home()),
            "BENTOML_DO_NOT_TRACK": "true",
            "OMP_NUM_THREADS": "1",
            "MLGUARD_CONFIG": str(self.config_path),
            "MLGUARD_SERVER__WORKERS": str(self.workers),
            "MLGUARD_ADMIN__STATE_DIR": str(self.workdir / "state"),
            "PYTHONPATH": str(ROOT),
        }
        env.update(self.extra_env)
        return env

    def bentoml_home(self) -> Path:
        """A BentoML home of this server's own, sharing the model store.

        BentoML keeps the Prometheus multiprocess files in $BENTOML_HOME/prometheus_multiproc_dir
        and wipes it when a server starts: servers sharing a home would mix (and erase) each
        other's metrics.
        """
        home = self.workdir / "bentoml_home"
        models = home / "models"
        if not models.exists():
            home.mkdir(parents=True, exist_ok=True)
            shared = Path(os.environ.get("BENTOML_HOME", str(ROOT / ".bentoml")))
            models.symlink_to((shared / "models").resolve(), target_is_directory=True)
        return home

    def start(self, timeout_s: float = 90) -> ServerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (open for the server's lifetime; stop() closes it)
        self.proc = subprocess.Popen(
            [BENTOML, "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.cwd,
            env=self.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches every worker
        )
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 20) -> int | None:
        if self.proc is None:
            return None
        # BentoML puts its workers in process groups of their own: remember them all first.
        family = descendants(self.proc.pid)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in family:  # no worker or drift process may outlive the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
