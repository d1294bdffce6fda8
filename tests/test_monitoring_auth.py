"""The monitoring routes that show live customers' data are not public, and the drift report is
rendered once per cache period.

Over real HTTP, a one-worker `bentoml serve` (one worker: one report cache to observe) with the
monitoring, admin and feedback tokens set: the report and /monitoring/performance answer only the
monitoring or the admin token; the report's second call within `drift.report_cache_s` is the
first call's page (`X-Mlguard-Cache: hit`), and a reload of that key takes effect.
/monitoring/drift and /metrics stay public. A second server with neither token set refuses both
routes with 403.
In-process: the bearer check on a small Starlette app, and the report cache's single render for
concurrent callers, with a render that waits for the test to release it.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.api.auth import BearerAuth, admin_auth, feedback_auth, monitoring_auth
from service.api.monitoring import CACHE_HEADER, ReportCache
from tests.conftest import wait_until
from tests.support.data import credit_rows
from tests.support.server import ROOT, ServerProcess

MONITORING = "monitoring-token-5c1e"
ADMIN = "admin-token-90d2"
FEEDBACK = "feedback-token-77ab"
ENV = {
    "MLGUARD_MONITORING_TOKEN": MONITORING,
    "MLGUARD_ADMIN_TOKEN": ADMIN,
    "MLGUARD_FEEDBACK_TOKEN": FEEDBACK,
    "MLGUARD_DRIFT__ACTION": "alert",  # replayed rows are drift by any measure
}
PROTECTED = ("/monitoring/drift/report", "/monitoring/performance")
CACHE_S = 600  # longer than this module runs: a second render within it is the cache failing
WINDOW_ROWS = 60


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def config_text(report_cache_s: float) -> str:
    text = (ROOT / "config" / "mlguard.yaml").read_text()
    text, replaced = re.subn(r"report_cache_s: [0-9.]+", f"report_cache_s: {report_cache_s}", text)
    assert replaced == 1, "config/mlguard.yaml has no drift.report_cache_s"
    return text


def drift_status(url: str) -> dict | None:
    try:
        r = httpx.get(f"{url}/monitoring/drift", timeout=10)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> Iterator[ServerProcess]:
    """One worker with every token set; its drift window holds rows when the tests start."""
    proc = ServerProcess(
        workdir=tmp_path_factory.mktemp("monitoring"), workers=1, env=ENV,
        config_text=config_text(CACHE_S),
    ).start()
    try:
        # Readiness does not wait for the drift process (serving never depends on it), and its
        # window takes rows once it has loaded the model version the worker serves.
        assert wait_until(
            lambda: "window_rows" in (drift_status(proc.url) or {}), timeout_s=180, interval_s=1
        )
        rows = credit_rows()[:WINDOW_ROWS]
        r = httpx.post(f"{proc.url}/predict_batch", json={"applications": rows}, timeout=30)
        assert r.status_code == 200, r.text
        assert wait_until(
            lambda: (drift_status(proc.url) or {}).get("window_rows", 0) >= WINDOW_ROWS, timeout_s=30
        )
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def closed(tmp_path_factory) -> Iterator[ServerProcess]:
    """No monitoring or admin token set (the session server has a monitoring token)."""
    proc = ServerProcess(workdir=tmp_path_factory.mktemp("closed"), workers=1,
                         env={"MLGUARD_FEEDBACK_TOKEN": FEEDBACK}).start()
    yield proc
    proc.stop()


def get(server: ServerProcess, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=headers or {}, timeout=150)


# ---- over HTTP -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PROTECTED)
def test_disabled_without_a_configured_token(closed: ServerProcess, path: str) -> None:
    """A forgotten variable closes the route, never opens it; the feedback token opens nothing."""
    for headers in ({}, bearer("anything"), bearer(MONITORING), bearer(FEEDBACK)):
        r = get(closed, path, headers)
        assert r.status_code == 403, r.text
        assert "MLGUARD_MONITORING_TOKEN" in r.json()["error"]


def test_deletion_is_disabled_without_the_admin_token(closed: ServerProcess) -> None:
    """DELETE /predictions/{id} with no admin token set: 403, naming the variable, whatever the
    header (the feedback token included)."""
    for headers in ({}, bearer("anything"), bearer(FEEDBACK)):
        r = httpx.delete(f"{closed.url}/predictions/{'0' * 32}", headers=headers, timeout=30)
        assert r.status_code == 403 and "MLGUARD_ADMIN_TOKEN" in r.json()["error"], r.text


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(MONITORING[:-1]),  # a prefix of the right token
        bearer(FEEDBACK),  # a token for another door
        {"Authorization": f"Basic {MONITORING}"},  # the right secret under the wrong scheme
        {"Authorization": MONITORING},
    ],
    ids=["none", "wrong", "prefix", "feedback-token", "basic", "no-scheme"],
)
def test_missing_or_wrong_token_is_401(monitored: ServerProcess, path: str, headers: dict) -> None:
    r = get(monitored, path, headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert "MLGUARD_MONITORING_TOKEN" in r.json()["error"]
    assert CACHE_HEADER.lower() not in r.headers  # refused before the report was looked at


def test_report_is_rendered_once_per_cache_period(monitored: ServerProcess) -> None:
    """The module's first report request (the tests above are all refused): it renders."""
    first = get(monitored, "/monitoring/drift/report", bearer(MONITORING))
    assert first.status_code == 200, first.text
    assert first.headers[CACHE_HEADER] == "miss"
    assert first.headers["content-type"].startswith("text/html")
    assert "Drifted Columns" in first.text and "amount" in first.text  # the window's real report
    assert first.headers["cache-control"] == "private, no-store"  # customers' data: no copies
    # With the admin token too; within the period it is the same page, not a new render.
    again = get(monitored, "/monitoring/drift/report", bearer(ADMIN))
    assert again.status_code == 200, again.text
    assert again.headers[CACHE_HEADER] == "hit"
    assert again.text == first.text
    assert int(again.headers["age"]) >= int(first.headers["age"])


def test_report_cache_period_follows_a_config_reload(monitored: ServerProcess) -> None:
    cached = get(monitored, "/monitoring/drift/report", bearer(MONITORING))
    assert cached.headers[CACHE_HEADER] in ("miss", "hit")
    monitored.config_path.write_text(config_text(0))  # every call renders
    try:
        assert wait_until(
            lambda: get(monitored, "/monitoring/drift/report", bearer(MONITORING)).headers[CACHE_HEADER]
            == "miss",
            timeout_s=30, interval_s=0.5,
        )
        again = get(monitored, "/monitoring/drift/report", bearer(MONITORING))
        assert again.status_code == 200 and again.headers[CACHE_HEADER] == "miss"
    finally:
        monitored.config_path.write_text(config_text(CACHE_S))
    assert wait_until(
        lambda: get(monitored, "/monitoring/drift/report", bearer(MONITORING)).headers[CACHE_HEADER]
        == "hit",
        timeout_s=30, interval_s=0.5,
    )


@pytest.mark.parametrize("token", [MONITORING, ADMIN], ids=["monitoring", "admin"])
def test_performance_answers_a_right_token(monitored: ServerProcess, token: str) -> None:
    r = get(monitored, "/monitoring/performance", bearer(token))
    assert r.status_code == 200, r.text  # the drift process is up (the fixture waited for it)
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["routing_to_fallback"], bool)


def test_the_drift_verdict_and_metrics_stay_public(monitored: ServerProcess) -> None:
    status = get(monitored, "/monitoring/drift")
    assert status.status_code == 200 and status.json()["window_rows"] >= WINDOW_ROWS
    metrics = get(monitored, "/metrics")
    assert metrics.status_code == 200 and "mlguard_requests_total" in metrics.text


# ---- the bearer check, in-process ------------------------------------------------------------


def app_with(auth: BearerAuth) -> TestClient:
    async def secret(request: Request) -> PlainTextResponse:
        return PlainTextResponse("opened")

    return TestClient(Starlette(routes=[Route("/", auth.protect(secret))]))


def test_each_token_opens_its_own_doors_only() -> None:
    env = {"MLGUARD_ADMIN_TOKEN": ADMIN, "MLGUARD_MONITORING_TOKEN": MONITORING,
           "MLGUARD_FEEDBACK_TOKEN": FEEDBACK}
    opened = {
        name: {token for token in (ADMIN, MONITORING, FEEDBACK)
               if app_with(make(env)).get("/", headers=bearer(token)).status_code == 200}
        for name, make in (("admin", admin_auth), ("monitoring", monitoring_auth),
                           ("feedback", feedback_auth))
    }
    assert opened == {"admin": {ADMIN}, "monitoring": {MONITORING, ADMIN}, "feedback": {FEEDBACK}}


def test_the_admin_token_alone_opens_monitoring_reads() -> None:
    client = app_with(monitoring_auth({"MLGUARD_ADMIN_TOKEN": ADMIN}))
    assert client.get("/", headers=bearer(ADMIN)).text == "opened"
    refused = client.get("/", headers=bearer(""))
    assert refused.status_code == 401 and "MLGUARD_ADMIN_TOKEN" in refused.json()["error"]


@pytest.mark.parametrize(
    ("make", "variable"),
    [(admin_auth, "MLGUARD_ADMIN_TOKEN"), (monitoring_auth, "MLGUARD_MONITORING_TOKEN"),
     (feedback_auth, "MLGUARD_FEEDBACK_TOKEN")],
)
def test_no_token_configured_is_403_naming_the_variable(make, variable: str) -> None:
    r = app_with(make({"MLGUARD_OTHER": "x", variable: ""})).get("/", headers=bearer(""))
    assert r.status_code == 403 and variable in r.json()["error"]


def test_a_configured_token_is_read_without_surrounding_whitespace() -> None:
    """A token from a secret file ends with a newline; HTTP strips the header's value, so the
    token is compared stripped too. A blank value configures nothing."""
    client = app_with(feedback_auth({"MLGUARD_FEEDBACK_TOKEN": f"{FEEDBACK}\n"}))
    assert client.get("/", headers=bearer(FEEDBACK)).status_code == 200
    blank = app_with(feedback_auth({"MLGUARD_FEEDBACK_TOKEN": " \n"}))
    for token in ("", " "):
        assert blank.get("/", headers=bearer(token)).status_code == 403


def test_tokens_are_read_when_the_app_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLGUARD_FEEDBACK_TOKEN", FEEDBACK)
    client = app_with(feedback_auth())
    monkeypatch.setenv("MLGUARD_FEEDBACK_TOKEN", "changed-later")
    assert client.get("/", headers=bearer(FEEDBACK)).status_code == 200
    assert client.get("/", headers=bearer("changed-later")).status_code == 401


# ---- the report cache, in-process ------------------------------------------------------------


class Renders:
    """A render that counts its calls and finishes only when the test releases it."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self) -> str:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise ConnectionError("drift process unreachable")
        return f"<p>report {self.calls}</p>"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    for _ in range(5):  # let every waiting task reach its await
        await asyncio.sleep(0)


def test_concurrent_callers_share_one_render() -> None:
    async def scenario() -> None:
        render = Renders()
        cache = ReportCache(render)
        callers = [asyncio.create_task(cache.get(60)) for _ in range(5)]
        await _settle()
        assert render.calls == 1  # one render under way for all five
        render.release.set()
        pages = await asyncio.gather(*callers)
        assert render.calls == 1
        assert {p.html for p in pages} == {"<p>report 1</p>"}
        assert sorted(p.source for p in pages) == ["miss", "shared", "shared", "shared", "shared"]

    asyncio.run(scenario())


def test_a_page_is_reused_until_it_is_older_than_the_period() -> None:
    async def scenario() -> None:
        render, clock = Renders(), Clock()
        render.release.set()
        cache = ReportCache(render, clock=clock)
        assert (await cache.get(60)).source == "miss"
        clock.now += 59.5
        page = await cache.get(60)
        assert (page.source, page.html, page.age_s) == ("hit", "<p>report 1</p>", 59.5)
        clock.now += 0.5
        page = await cache.get(60)
        assert (page.source, page.html, render.calls) == ("miss", "<p>report 2</p>", 2)
        assert (await cache.get(0)).source == "miss"  # a period of 0: no cache
        assert render.calls == 3

    asyncio.run(scenario())


def test_a_failed_render_reaches_every_waiter_and_is_not_cached() -> None:
    async def scenario() -> None:
        render = Renders()
        render.fail = True
        cache = ReportCache(render)
        callers = [asyncio.create_task(cache.get(60)) for _ in range(3)]
        await _settle()
        render.release.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results) and render.calls == 1
        render.fail = False
        page = await cache.get(60)
        assert (page.source, page.html, render.calls) == ("miss", "<p>report 2</p>", 2)

    asyncio.run(scenario())


def test_a_caller_that_leaves_does_not_cancel_the_render_of_the_others() -> None:
    async def scenario() -> None:
        render = Renders()
        cache = ReportCache(render)
        leaving, staying = asyncio.create_task(cache.get(60)), asyncio.create_task(cache.get(60))
        await _settle()
        leaving.cancel()  # its client disconnected
        await _settle()
        render.release.set()
        assert (await staying).html == "<p>report 1</p>"
        assert leaving.cancelled()
        assert (await cache.get(60)).source == "hit" and render.calls == 1

    asyncio.run(scenario())
