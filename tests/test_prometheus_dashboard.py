"""The Grafana dashboard and the alert rules against a real Prometheus scraping the real service.

Every PromQL expression of the dashboard (panels, annotations, variables) and of alerts.yml must
parse in Prometheus, and the core panels must return data once traffic has flowed.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import wait_until
from tests.support.data import GOOD_ROW, credit_rows
from tests.support.metrics import scrape, total
from tests.support.prometheus import PrometheusProcess, require_binary, scraping
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "mlguard-dashboard.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DS = "${DS_PROMETHEUS}"
# Grafana's template variables, as Grafana would expand them with "All" selected.
VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "job": ".*", "route": ".*"}
# Panels the traffic below must fill; panels added under "Drift" or "Circuit breaker" only
# have to parse here (their own tests drive the state that fills them).
CORE_PANELS = {
    "Request rate by route",
    "Fallback ratio",
    "Fallback reasons",
    "Model version",
    "Routing mode",
    "Fault drill",
    "Latency p50 / p95 / p99 by route",
    "Model latency",
    "Probability distribution",
    "Approval rate by route",
    "Input violations by field",
    "Config reloads",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))  # a collapsed row holds its panels


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"unknown template variable in {expr!r}: add it to VARIABLES"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expression) for every PromQL expression the dashboard sends to Prometheus."""
    d = dashboard()
    found = []
    for p in all_panels(d["panels"]):
        for t in p.get("targets", []):
            found.append((f"{p['title']} / {t['refId']}", t["expr"]))
    for a in d["annotations"]["list"]:
        if a.get("expr"):
            found.append((f"annotation {a['name']}", a["expr"]))
    return found


def alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]


# ---- the dashboard file itself ---------------------------------------------------------------


def test_dashboard_is_importable_with_the_datasource_as_a_variable() -> None:
    d = dashboard()
    assert d["uid"] and d["title"]
    assert d.get("id") is None  # a database id would clash on import
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = list(all_panels(d["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": DS}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DS, p["title"]
    assert DS not in json.dumps(variables["DS_PROMETHEUS"])  # it cannot refer to itself


def test_dashboard_has_the_issue_panels_and_rows_for_later_work() -> None:
    d = dashboard()
    titles = {p["title"] for p in all_panels(d["panels"])}
    assert CORE_PANELS <= titles
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert "Drift" in rows and "Circuit breaker" in rows
    heatmap = next(p for p in all_panels(d["panels"]) if p["title"] == "Probability distribution")
    assert heatmap["type"] == "heatmap" and heatmap["targets"][0]["format"] == "heatmap"


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard_folder() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "mlguard-prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "mlguard.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_a_missing_binary_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="prometheus"):
        require_binary("prometheus")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_binary("prometheus")


# ---- against a real Prometheus ---------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory) -> Iterator[PrometheusProcess]:
    with scraping(
        tmp_path_factory.mktemp("prometheus"), targets=[f"127.0.0.1:{server.port}"], rule_files=[ALERTS]
    ) as prom:
        yield prom


@pytest.fixture(scope="module")
def traffic(prometheus: PrometheusProcess, server: ServerProcess) -> PrometheusProcess:
    """Two waves of mixed traffic, each seen by Prometheus, so every rate() has an increase."""
    rows = credit_rows()[:120]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for wave in (rows[:60], rows[60:]):
            for row in (GOOD_ROW, {**GOOD_ROW, "age": 140}, {**GOOD_ROW, "home": "houseboat"}):
                assert c.post("/predict", json=row).status_code == 200
            assert c.post("/predict_batch", json={"applications": wave}).status_code == 200
            expected = total(scrape(server.url), "mlguard_requests_total")
            assert wait_until(
                lambda n=expected: prometheus.value("sum(mlguard_requests_total)") == n,
                timeout_s=30,
            )
    return prometheus


@pytest.mark.parametrize(("where", "expr"), dashboard_exprs(), ids=[w for w, _ in dashboard_exprs()])
def test_dashboard_expression_parses_and_core_panels_have_data(
    traffic: PrometheusProcess, where: str, expr: str
) -> None:
    answer = traffic.query(expand(expr))
    assert answer["status"] == "success", (where, answer)
    if where.split(" / ")[0] in CORE_PANELS:
        values = [float(r["value"][1]) for r in answer["data"]["result"]]
        assert any(math.isfinite(v) for v in values), (where, answer["data"])


def test_dashboard_variables_resolve(traffic: PrometheusProcess) -> None:
    for v in dashboard()["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
        assert m, v["query"]
        selector, label = expand(m.group(1)), m.group(2)
        answer = traffic.api(f"label/{label}/values", **{"match[]": selector})
        assert answer["status"] == "success" and answer["data"], (v["name"], answer)
    routes = traffic.api("label/route/values", **{"match[]": "mlguard_requests_total"})["data"]
    assert {"model", "heuristic"} <= set(routes)


@pytest.mark.parametrize(("alert", "expr"), alert_exprs(), ids=[a for a, _ in alert_exprs()])
def test_alert_expression_parses(traffic: PrometheusProcess, alert: str, expr: str) -> None:
    answer = traffic.query(expr)
    assert answer["status"] == "success", (alert, answer)


def test_prometheus_evaluates_every_alert_rule_without_error(traffic: PrometheusProcess) -> None:
    names = {a for a, _ in alert_exprs()}

    def evaluated() -> list[dict]:
        groups = traffic.api("rules")["data"]["groups"]
        # Never evaluated reads as Go's zero time.
        return [r for g in groups for r in g["rules"] if not r["lastEvaluation"].startswith("0001")]

    assert wait_until(lambda: {r["name"] for r in evaluated()} >= names, timeout_s=15)
    for rule in evaluated():
        assert rule["health"] == "ok", rule


def test_a_rejected_config_edit_raises_the_reload_alert(
    traffic: PrometheusProcess, server: ServerProcess, edit_config: Callable[[str], None]
) -> None:
    """The alert's metric and labels are the service's real ones: it goes pending end to end."""

    def state() -> str | None:
        alerts = traffic.api("alerts")["data"]["alerts"]
        return next((a["state"] for a in alerts if a["labels"]["alertname"] == "MlguardConfigReloadFailed"), None)

    assert state() is None
    cfg = yaml.safe_load(server.config_path.read_text())
    cfg["routing"]["mode"] = "sideways"
    edit_config(yaml.safe_dump(cfg))
    assert wait_until(lambda: state() in ("pending", "firing"), timeout_s=30)
