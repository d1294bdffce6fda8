"""Shared fixtures: one real credit-risk server for the whole session, with two workers."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

# The model store is the project's own, whether pytest is run by `make test` or by hand.
os.environ.setdefault("BENTOML_HOME", str(Path(__file__).resolve().parent.parent / ".bentoml"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from tests.support.server import ServerProcess
from tests.support.wait import wait_until  # noqa: F401 (tests import it from here)

# Feedback and monitoring reads are token-protected; the admin token stays unset on the shared
# server (tests/test_admin.py checks that admin writes are then disabled).
FEEDBACK_TOKEN = "test-feedback-token"
MONITORING_TOKEN = "test-monitoring-token"
TOKENS = {"MLGUARD_FEEDBACK_TOKEN": FEEDBACK_TOKEN, "MLGUARD_MONITORING_TOKEN": MONITORING_TOKEN}


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """Two workers, so every HTTP test also exercises the multi-process paths.

    Drift only alerts here: the tests replay the same rows many times, which is drift by any
    measure; routing on drift is tested on servers of its own.
    """
    proc = ServerProcess(
        workdir=tmp_path_factory.mktemp("server"),
        workers=2,
        env={"MLGUARD_DRIFT__ACTION": "alert", **TOKENS},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def edit_config(server: ServerProcess) -> Iterator[Callable[[str], None]]:
    """Rewrite the running server's config file; the original is restored (and reloaded) after."""
    original = server.config_path.read_text()

    def write(text: str) -> None:
        server.config_path.write_text(text)

    yield write
    server.config_path.write_text(original)
    time.sleep(2.5)  # every worker polls once a second; let them all settle on the original
