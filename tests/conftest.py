"""Shared fixtures: one real credit-risk server for the whole session, with two workers."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """Two workers, so every HTTP test also exercises the multi-process paths."""
    proc = ServerProcess(workdir=tmp_path_factory.mktemp("server"), workers=2).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


@pytest.fixture
def edit_config(server: ServerProcess) -> Iterator[Callable[[str], None]]:
    """Rewrite the running server's config file; the original is restored (and reloaded) after."""
    original = server.config_path.read_text()

    def write(text: str) -> None:
        server.config_path.write_text(text)

    yield write
    server.config_path.write_text(original)
    time.sleep(2.5)  # every worker polls once a second; let them all settle on the original
