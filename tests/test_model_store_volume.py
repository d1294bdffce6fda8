"""Model versions from a store the pod reads: a volume mounted as $BENTOML_HOME/models.

A Bento packs one model; a model.tag naming another version needs a store the pod can read
(docs/DEPLOY.md, "Where model versions live"). Locally: a fresh BENTOML_HOME whose `models` is a
separate directory (the "mounted volume"), filled with `bentoml models export` / `import` alone;
the credit service started with MLGUARD_MODEL__TAG=<that version> answers with it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import pytest

from tests.support.data import GOOD_ROW
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).parent / "bentoml")


def bentoml_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    return subprocess.run([BENTOML, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def volume_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    """The credit service whose BentoML home has only the volume as its model store."""
    tag = str(bentoml.models.get("credit_risk:latest").tag)  # one exact version, e.g. credit_risk:abc
    shared_home = Path(os.environ["BENTOML_HOME"])
    exported = tmp_path_factory.mktemp("export") / "credit.bentomodel"
    done = bentoml_cli(shared_home, "models", "export", tag, str(exported))
    assert done.returncode == 0 and exported.is_file(), done.stdout + done.stderr

    workdir = tmp_path_factory.mktemp("volume-store")
    volume = workdir / "volume"  # what Kubernetes would mount; a directory of its own
    volume.mkdir()
    home = workdir / "bentoml_home"  # the server's BENTOML_HOME (ServerProcess.bentoml_home())
    home.mkdir()
    (home / "models").symlink_to(volume, target_is_directory=True)

    missing = bentoml_cli(home, "models", "get", tag)
    assert missing.returncode != 0, "a fresh home must not see the project's store"
    imported = bentoml_cli(home, "models", "import", str(exported))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    name, version = tag.split(":")
    assert (volume / name / version / "model.yaml").is_file()  # it landed on the volume

    server = ServerProcess(workdir=workdir, env={"MLGUARD_MODEL__TAG": tag}).start()
    assert server.bentoml_home() == home
    try:
        yield server, tag, volume
    finally:
        server.stop()


def test_the_tag_imported_into_the_volume_is_served(volume_server: tuple[ServerProcess, str, Path]) -> None:
    server, tag, _ = volume_server
    body = httpx.post(f"{server.url}/predict", json=GOOD_ROW, timeout=30).json()
    assert body["route"] == "model", body
    assert body["model_version"] == tag
    assert "model.unavailable" not in body["reasons"]
    state = httpx.get(f"{server.url}/admin/state", timeout=10).json()["model"]
    assert state["version"] == tag and state["loaded"] is True, state


def test_the_store_holds_only_what_was_imported(volume_server: tuple[ServerProcess, str, Path]) -> None:
    """The project's store is not behind the server: the volume has the one version imported."""
    _, tag, volume = volume_server
    name, version = tag.split(":")
    versions = sorted(p.name for p in (volume / name).iterdir() if p.is_dir())
    assert versions == [version]
    assert sorted(p.name for p in volume.iterdir() if p.is_dir()) == [name]
