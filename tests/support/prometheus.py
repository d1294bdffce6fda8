"""A real Prometheus (and promtool) for tests: loopback only, temp config and storage, owned PID."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.server import free_port
from tests.support.wait import wait_until


def require_binary(name: str) -> str:
    """The binary's path; skip (with the reason) when it is missing, but fail under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"`{name}` is not installed (Debian package `prometheus`; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true forbids skipping")
    pytest.skip(reason)


class PrometheusProcess:
    """Scrapes `targets` every second and evaluates `rule_files` every second.

    The owner must call stop(); it ends the process it started, by PID.
    """

    def __init__(self, workdir: Path, targets: list[str], rule_files: Sequence[Path] = ()) -> None:
        self.binary = require_binary("prometheus")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "mlguard", "static_configs": [{"targets": targets}]}],
        }
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> PrometheusProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (open while the process runs)
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout_s}s:\n{self.log_tail()}")

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        """The JSON body of an HTTP API call; errors (bad PromQL: 400) are returned, not raised."""
        return httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float | None:
        """The value of a one-element instant vector, None when there is no data."""
        result = self.query(expr).get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@contextmanager
def scraping(workdir: Path, targets: list[str], rule_files: Sequence[Path] = ()) -> Iterator[PrometheusProcess]:
    """A started Prometheus that has scraped its first target at least once; stopped on exit."""
    prom = PrometheusProcess(workdir, targets=targets, rule_files=rule_files).start()
    try:
        assert wait_until(lambda: prom.value('up{job="mlguard"}') == 1.0, timeout_s=30), prom.log_tail()
        yield prom
    finally:
        prom.stop()
