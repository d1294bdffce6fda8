"""The fleet's drift roles in one process, on a real PostgreSQL database: two instances' FleetDrift
(each with its own FleetStore, lease connection and DriftMonitor with its own gauges) hand the
judge's lease over, follow, and judge alone when their path to the store is cut (a TCP proxy;
the shared server is never stopped). The HTTP drill with three servers is tests/test_fleet.py."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from apps.credit.app import CREDIT_APP
from apps.credit.data import load_credit_data, split_data
from monitors.drift.monitor import DriftMonitor
from monitors.drift.policy import ClearState, DriftedState
from monitors.metrics import DriftMetrics
from service.store import open_store
from service.store.fleet import FleetStore
from service.worker.config import DriftConfig
from service.worker.fleet_drift import FOLLOWER, JUDGE, LOCAL, FleetDrift
from tests.support.postgres import fresh_database, server_address, via_port
from tests.support.tcp_proxy import TcpProxy

CONFIG = DriftConfig(window_size=300, min_samples=200, check_interval_s=0.2)
VERSION = "v1"


@pytest.fixture(scope="module")
def reference():
    return split_data(load_credit_data()).train[CREDIT_APP.features.names]


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


class Instance:
    """One instance's monitoring side: its fleet store (through `url`), a monitor built on first
    need (as the drift process builds it, zeroing its gauges), and the gauges' registry."""

    def __init__(self, url: str, name: str, reference, show: Callable[[dict], None] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.metrics = DriftMetrics(self.registry)
        self.reference = reference
        self._monitor: DriftMonitor | None = None
        self.fleet = FleetStore(open_store(url, CREDIT_APP.name), url)
        self.fleet.identity = name
        self.drift = FleetDrift(self.fleet, self.monitor, lambda row: None, lambda: VERSION,
                                lambda: CONFIG, show or self.metrics.show_verdict)

    def monitor(self) -> DriftMonitor:
        if self._monitor is None:
            self._monitor = DriftMonitor(CREDIT_APP.features, self.reference, lambda: CONFIG, self.metrics)
        return self._monitor

    def tick(self) -> None:
        time.sleep(CONFIG.check_interval_s)  # a check is due at every tick
        self.drift.tick()

    def detected(self) -> float | None:
        return self.registry.get_sample_value("mlguard_drift_detected")

    def close(self) -> None:
        self.fleet.close()


def _judge_says(instance: Instance, state: type) -> None:
    """The judge's next check ends in `state`: its window is empty, so the check finds too few
    rows and publishes the policy's state, set here as a run of real checks would have (which
    would have set the judge's own gauges too; the tests look at the other instance's)."""
    instance.monitor().policy.move_to(state)
    instance.tick()
    assert instance.drift.verdict["policy_state"] == state.name


def test_a_new_judge_shows_the_carried_drifted_verdict_until_its_first_check(database, reference) -> None:
    a, b = Instance(database, "a", reference), Instance(database, "b", reference)
    try:
        a.tick()
        assert a.drift.role == JUDGE
        _judge_says(a, DriftedState)
        b.tick()
        assert b.drift.role == FOLLOWER and b.detected() == 1 and b.drift.routing_to_fallback()

        a.fleet.resign()  # a loses its lease (its connection, and the lock with it, is gone)
        b.tick()
        # b builds its monitor (Evidently's, in production) only now: the gauges it zeroes must
        # still say what b routes on.
        assert b.drift.role == JUDGE and b.drift.routing_to_fallback()
        assert b.monitor().policy.drifted and b.detected() == 1
    finally:
        a.close()
        b.close()


@contextmanager
def cut_off_and_judge(database: str, reference) -> Iterator[tuple[Instance, Instance, TcpProxy]]:
    """Two instances: the first reaches the store through a proxy the test can cut, the second
    directly (it judges while the first is cut off)."""
    with TcpProxy(*server_address()) as proxy:
        cut, judge = Instance(via_port(database, proxy.port), "a", reference), Instance(database, "b", reference)
        try:
            yield cut, judge, proxy
        finally:
            proxy.restore()
            cut.close()
            judge.close()


def test_judging_alone_starts_from_the_fleets_verdict_not_an_old_one(database, reference) -> None:
    """a judged a drifted fleet long ago, followed it back to clear, then lost the store: its
    first checks alone (too few rows yet) must keep the fleet's clear verdict, not revive its
    old drifted state."""
    with cut_off_and_judge(database, reference) as (a, b, proxy):
        a.tick()
        _judge_says(a, DriftedState)
        a.fleet.resign()
        b.tick()
        _judge_says(b, ClearState)  # the drift ended, on b's checks
        a.tick()
        assert a.drift.role == FOLLOWER and not a.drift.routing_to_fallback() and a.detected() == 0
        assert a.monitor().policy.drifted  # what a's monitor still holds from its own checks
        proxy.cut()
        a.tick()
        assert a.drift.role == LOCAL
        assert not a.drift.routing_to_fallback() and a.drift.verdict["policy_state"] == "clear"
        assert a.detected() == 0


def test_an_instance_that_never_judged_keeps_a_drifted_fleet_drifted_alone(database, reference) -> None:
    with cut_off_and_judge(database, reference) as (c, b, proxy):
        b.tick()
        _judge_says(b, DriftedState)
        c.tick()
        assert c.drift.role == FOLLOWER and c.drift.routing_to_fallback()
        proxy.cut()
        c.tick()
        assert c.drift.role == LOCAL and c.drift.routing_to_fallback() and c.detected() == 1


def test_a_failing_gauge_update_does_not_cost_the_lease(database, reference) -> None:
    """`show` raising (a malformed published verdict) is not a store outage: the judge keeps its
    lease and judges on."""
    published: list[Any] = []

    def broken(verdict: dict) -> None:
        published.append(verdict)
        raise ValueError("malformed verdict")

    first = Instance(database, "first", reference)
    try:
        first.tick()
        _judge_says(first, DriftedState)
    finally:
        first.close()
    a = Instance(database, "a", reference, show=broken)
    try:
        a.tick()  # takes the lease over, carrying the drifted verdict: show is called and fails
        assert published and a.drift.role == JUDGE and a.drift.routing_to_fallback()
        a.tick()
        assert a.drift.role == JUDGE
    finally:
        a.close()
