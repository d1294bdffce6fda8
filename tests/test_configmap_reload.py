"""Hot reload through a Kubernetes ConfigMap volume, laid out and swapped exactly as kubelet does.

kubelet (pkg/volume/util/atomic_writer.go) keeps the files in a timestamped directory, points
`..data` at it, and exposes each key as `<key> -> ..data/<key>`. An update writes a new timestamped
directory, points a `..data_tmp` symlink at it, renames that over `..data` (one atomic rename), and
removes the old directory. The file's path never changes; its content does, all at once.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.support.data import GOOD_ROW
from tests.support.metrics import scrape, total
from tests.support.server import ROOT, ServerProcess

WORKERS = 2
CONFIG_TEXT = (ROOT / "config" / "mlguard.yaml").read_text()
FORCED = CONFIG_TEXT.replace("mode: auto", "mode: fallback")
INVALID = CONFIG_TEXT.replace("mode: auto", "mode: sideways")


class ConfigMapVolume:
    """A directory as kubelet maintains it for a ConfigMap with one key, mlguard.yaml."""

    KEY = "mlguard.yaml"

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        self._stamps = count(1)
        root.mkdir(parents=True)
        os.symlink(self._write_version(text), root / "..data")
        os.symlink(Path("..data") / self.KEY, root / self.KEY)

    @property
    def path(self) -> Path:
        return self.root / self.KEY

    def _write_version(self, text: str) -> str:
        name = f"..2026_11_28_12_00_00.{next(self._stamps):09d}"
        (self.root / name).mkdir()
        (self.root / name / self.KEY).write_text(text)
        return name

    def update(self, text: str) -> None:
        old = os.readlink(self.root / "..data")
        new = self._write_version(text)
        os.symlink(new, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")  # the atomic step
        shutil.rmtree(self.root / old)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path_factory.mktemp("configmap") / "mlguard", CONFIG_TEXT)


@pytest.fixture(scope="module")
def server(
    volume: ConfigMapVolume, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        workdir=tmp_path_factory.mktemp("cm-server"),
        workers=WORKERS,
        env={"MLGUARD_CONFIG": str(volume.path)},
    ).start()
    yield proc
    proc.stop()


def answers(server: ServerProcess, n: int = 8) -> list[dict]:
    """n predictions, enough to reach both workers in practice; the reload counters prove it."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return [client.post("/predict", json=GOOD_ROW).json() for _ in range(n)]


def forced(bodies: list[dict]) -> bool:
    return all(b["route"] == "heuristic" and "config.forced" in b["reasons"] for b in bodies)


def reloads(server: ServerProcess, outcome: str) -> float:
    return total(scrape(server.url), "mlguard_config_reloads_total", outcome=outcome)


def test_configmap_swaps_take_effect_and_invalid_ones_are_rejected(
    server: ServerProcess, volume: ConfigMapVolume
) -> None:
    assert volume.path.is_symlink() and volume.path.read_text() == CONFIG_TEXT
    assert all(b["route"] == "model" for b in answers(server))
    base_success, base_failure = reloads(server, "success"), reloads(server, "failure")

    volume.update(FORCED)
    assert volume.path.resolve().parent.name.endswith("000000002")  # the swap really happened
    assert wait_until(
        lambda: reloads(server, "success") >= base_success + WORKERS and forced(answers(server)),
        timeout_s=5,
    ), "every worker follows the ConfigMap swap within 5 s"

    volume.update(INVALID)
    assert wait_until(lambda: reloads(server, "failure") >= base_failure + WORKERS, timeout_s=5)
    assert forced(answers(server)), "the last good config stays in force"
    assert reloads(server, "success") == base_success + WORKERS
    assert "mode: sideways" in volume.path.read_text()

    volume.update(CONFIG_TEXT)  # a fix after a rejected edit is picked up as usual
    assert wait_until(
        lambda: all(b["route"] == "model" for b in answers(server)), timeout_s=5
    )
    assert sorted(p.name for p in volume.root.iterdir() if p.name.startswith("..2026")) == [
        "..2026_11_28_12_00_00.000000004"
    ], "old versions are gone, as kubelet leaves them"
