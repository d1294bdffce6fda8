"""The version the drift process follows while its workers disagree (service/worker/served_versions.py)."""
from __future__ import annotations

from service.worker.served_versions import ServedVersions


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_split_of_workers_does_not_make_the_process_flip_between_versions() -> None:
    """One worker's swap to v2 was refused, the other swapped: reports alternate at every flush,
    and the version followed stays v1, so its window keeps filling."""
    clock = Clock()
    versions = ServedVersions(ttl_s=5.0, clock=clock)
    versions.report("v1")
    assert versions.follow(None) == "v1"  # at start: what the workers serve
    followed = ["v1"]
    for flush in range(1, 21):
        clock.now = flush * 0.5
        versions.report("v2" if flush % 2 else "v1")
        followed.append(versions.follow(followed[-1]))
    assert set(followed) == {"v1"}


def test_the_process_moves_on_once_no_worker_serves_the_old_version() -> None:
    clock = Clock()
    versions = ServedVersions(ttl_s=5.0, clock=clock)
    versions.report("v1")
    clock.now = 1.0
    versions.report("v2")
    assert versions.follow("v1") == "v1"  # a worker reported v1 within the last 5 s
    clock.now = 6.5
    versions.report("v2")
    assert versions.follow("v1") == "v2"  # every worker has swapped
    clock.now = 20.0
    assert versions.follow("v2") is None  # no reports at all: nothing to follow (the caller keeps its own)
