"""One drift verdict for every instance of a plug-in sharing a PostgreSQL store.

Each instance's monitoring process plays one of three roles, decided again at every tick:

- **judge** (it holds the lease, service/store/fleet.py): it feeds its drift monitor with the
  fleet's newest served rows, read from the prediction log every instance writes, runs the one
  check per `drift.check_interval_s`, and publishes the verdict. Only the judge loads Evidently.
- **follower**: it reads the published verdict and answers its workers with it, so every
  instance routes on the same verdict. It never runs a check.
- **local** (the store is unreachable): it judges its own instance's window, fed by its workers
  all along, until the store returns; then it rejoins the fleet.

One judge means one test per interval for the whole fleet, so the fleet's false-alarm rate is one
instance's, not N times it, and a window fills N times faster than N windows would.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from monitors.drift.window import WindowRow
from service.store.fleet import FleetRow, FleetStore
from service.worker.config import DriftConfig

log = logging.getLogger("mlguard.drift")

JUDGE, FOLLOWER, LOCAL = "judge", "follower", "local"
# Rows reach the log up to a flush interval (and a write) after their issue time: the judge reads
# back this far past its cursor and skips the ids it has already seen.
LAG_S = 5.0
STALE_AFTER_CHECKS = 3  # a verdict older than this many intervals: no judge is publishing


class FleetDrift:
    """Owned by the monitoring process; `tick()` runs in its drift thread, `ingest` on its workers'
    flushes."""

    def __init__(
        self,
        fleet: FleetStore,
        monitor: Callable[[], Any],  # this process's DriftMonitor for the served version (or None)
        window_row: Callable[[FleetRow], WindowRow | None],
        version: Callable[[], str | None],
        settings: Callable[[], DriftConfig],
        show: Callable[[dict[str, Any]], None],
    ) -> None:
        """`show(verdict)` puts a verdict this instance did not check itself on its gauges
        (DriftMetrics.show_verdict): a follower's, and a new judge's carried-over one."""
        self.fleet = fleet
        self._show = show
        self._monitor = monitor
        self._window_row = window_row
        self._version = version
        self._settings = settings
        self.role = FOLLOWER
        self.verdict: dict[str, Any] = {"routing_to_fallback": False, "policy_state": "clear"}
        self.judge: str | None = None
        self._local: deque[WindowRow] = deque(maxlen=settings().window_size)
        self._judged: str | None = None  # the version the judge's window holds
        self._cursor = 0.0
        self._seen: deque[str] = deque()
        self._seen_set: set[str] = set()
        self._last_check = 0.0

    def ingest(self, rows: list[WindowRow]) -> None:
        """This instance's workers' rows: kept for judging locally when the store is down."""
        if self._local.maxlen != self._settings().window_size:
            self._local = deque(self._local, maxlen=self._settings().window_size)
        self._local.extend(rows)
        if self.role == LOCAL and (monitor := self._monitor()) is not None:
            monitor.ingest(rows)

    def routing_to_fallback(self) -> bool:
        return bool(self.verdict.get("routing_to_fallback"))

    def status(self) -> dict[str, Any]:
        """What GET /monitoring/drift shows: the fleet's verdict and who judged it."""
        return {**self.verdict.get("status", {}), "routing_to_fallback": self.routing_to_fallback(),
                "policy_state": self.verdict.get("policy_state"), "fleet": {
                    "role": self.role, "judge": self.judge, "instance": self.fleet.identity}}

    def tick(self) -> None:
        try:
            leading = self.fleet.lead()
            if leading:
                self._judge()
            else:
                self._follow()
        except Exception as exc:  # noqa: BLE001 -- the store is down: judge this instance alone
            self.fleet.resign()
            if self.role != LOCAL:
                log.warning("store unreachable (%s): judging this instance's window alone", exc)
            self._judge_locally()

    def _due(self) -> bool:
        return time.monotonic() - self._last_check >= self._settings().check_interval_s

    def _judge(self) -> None:
        version = self._version()
        if version is None:
            return
        if self.role != JUDGE:
            self._take_over()
        monitor = self._monitor()  # built on first need: Evidently is imported here
        if monitor is None:
            return
        cfg = self._settings()
        if self._judged != version:
            self._start_judging(monitor, version)
        elif not self._due():
            return
        rows = self.fleet.recent_rows(version, self._cursor - LAG_S, 4 * cfg.window_size)
        monitor.ingest(self._fresh(rows, cfg.window_size))
        self._last_check = time.monotonic()
        monitor.check_once()
        self.verdict = {
            "routing_to_fallback": monitor.routing_to_fallback(),
            "policy_state": monitor.policy.state.name,
            "status": monitor.status(),
        }
        self.judge = self.fleet.identity
        self.fleet.publish("drift", self.verdict, time.time())

    def _take_over(self) -> None:
        """The lease is ours: say so at once, with the verdict in force carried over (a drifted
        fleet stays drifted), before the monitor and Evidently are loaded."""
        previous = self.fleet.verdict("drift")
        if previous is not None:
            self.verdict = previous.payload
            self._display(self.verdict)
        log.info("this instance judges drift for the fleet now (%s)", self.fleet.identity)
        self.role, self._judged, self.judge = JUDGE, None, self.fleet.identity
        self.fleet.publish("drift", self.verdict, time.time())

    def _start_judging(self, monitor: Any, version: str) -> None:
        """A new judge (or a new version): the window restarts from the fleet's newest rows."""
        self._restart(monitor)
        self._seen.clear()
        self._seen_set.clear()
        self._cursor = 0.0
        self._judged = version
        self._last_check = 0.0

    def _restart(self, monitor: Any) -> None:
        """Before this instance judges again (for the fleet, or alone while the store is down):
        its monitor starts from the verdict in force, not from whatever it held when it last
        judged, maybe long ago. A drifted fleet stays drifted, so a takeover does not wait
        enter_after checks again; a clear one stays clear. Its last check is not republished,
        and the gauges (which a newly built monitor zeroes) show the verdict until its first."""
        monitor.restart(drifted=self.verdict.get("policy_state") == "drifted")
        self._display(self.verdict)

    def _fresh(self, rows: list[FleetRow], keep: int) -> list[WindowRow]:
        fresh = []
        for row in rows:
            if row.request_id in self._seen_set:
                continue
            self._seen.append(row.request_id)
            self._seen_set.add(row.request_id)
            self._cursor = max(self._cursor, row.ts)
            window_row = self._window_row(row)
            if window_row is not None:
                fresh.append(window_row)
        while len(self._seen) > 4 * keep:  # enough to skip what the lag re-reads
            self._seen_set.discard(self._seen.popleft())
        return fresh

    def _follow(self) -> None:
        if self.role == JUDGE:
            log.info("another instance judges drift now")
        self.role = FOLLOWER
        published = self.fleet.verdict("drift")
        if published is None:
            return  # no judge has published yet: the last verdict stands (at first: clear)
        stale = time.time() - published.checked_at > STALE_AFTER_CHECKS * self._settings().check_interval_s
        if not stale:
            self.verdict, self.judge = published.payload, published.judge
            self._display(self.verdict)

    def _display(self, verdict: dict[str, Any]) -> None:
        """`show`, whose failure (a malformed published verdict) must not look like a store
        outage to tick(), which would resign the lease at every tick."""
        try:
            self._show(verdict)
        except Exception:  # the gauges lag; the routing verdict still holds
            log.exception("could not show the drift verdict on this instance's gauges")

    def _judge_locally(self) -> None:
        monitor = self._monitor()
        if monitor is None:
            return
        if self.role != LOCAL:
            self.role, self._judged = LOCAL, None
            self._restart(monitor)
            monitor.ingest(list(self._local))
        if not self._due():
            return
        self._last_check = time.monotonic()
        monitor.check_once()
        self.judge = self.fleet.identity
        self.verdict = {"routing_to_fallback": monitor.routing_to_fallback(),
                        "policy_state": monitor.policy.state.name, "status": monitor.status()}
