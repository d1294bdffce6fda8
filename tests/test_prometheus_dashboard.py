"""The Grafana dashboard and the alert rules against a real Prometheus scraping real services.

Every PromQL expression of the dashboard (panels, annotations, variables) and of alerts.yml must
parse in Prometheus, and the core panels must return data once traffic has flowed. Prometheus
scrapes two plug-ins in one job, as two deployments of one dashboard would be: the credit app
(binary: probability heatmap, decision share) and the diabetes example (regression: the value
panel). A third service whose model is missing shows the "Model loaded" panel and the
MlguardModelUnavailable alert on their real metric. A fourth swaps to another version of the
credit model beside the session server: the "Model versions" row shows the two versions and the
swaps by outcome, and a refused tag raises MlguardModelSwapFailed. The "Live performance" row's
prediction log and feedback panels fill from the same traffic; its panels fed by outcomes parse.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
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
    "Model loaded",
    "Routing mode",
    "Fault drill",
    "Latency p50 / p95 / p99 by route",
    "Model latency",
    "Probability distribution",  # binary plug-ins
    "Decision share by route",  # classification plug-ins
    "Predicted value by route",  # regression plug-ins
    "Input violations by field",
    "Config reloads",
    "Instances serving each model version",
    "Model version by instance",
    "Model loaded by instance",
    "Model swaps by outcome",  # its counters exist at 0 from the start
    "Model load time",
    # The prediction log records every answer, and the feedback counters exist at 0 from the start.
    "Prediction log rows written / dropped",
    "Prediction log buffer and store",
    "Feedback by outcome",
}
# The "Live performance" row (issue 13). The panels fed by outcomes only parse here: the session
# server gets no outcomes (it has no feedback token).
LIVE_PANELS = {
    "Model vs rules on live labels",
    "Model minus rules on live labels",
    "Realized metric by route",
    "Estimated vs realized (model route)",
    "Label coverage and labelled rows",
    "Label delay p50 / p90 / p99",
    "Feedback by outcome",
    "Prediction log rows written / dropped",
    "Prediction log buffer and store",
    "Performance checks by outcome",
}
METRICS_MODULE = ROOT / "monitors" / "metrics.py"
# What prometheus_client appends to a metric's name on exposition.
SUFFIXES = re.compile(r"_(total|bucket|sum|count)$")
# A generic dashboard: no plug-in's domain in its words.
DOMAIN_WORDS = re.compile(r"approv|declin|credit|loan|lend|default rate", re.IGNORECASE)
REGRESSION_APP = "apps.diabetes.app:DiabetesService"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel(title: str) -> dict:
    return next(p for p in all_panels(dashboard()["panels"]) if p["title"] == title)


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
    assert "Drift" in rows and "Circuit breaker" in rows and "Model versions" in rows
    heatmap = panel("Probability distribution")
    assert heatmap["type"] == "heatmap" and heatmap["targets"][0]["format"] == "heatmap"
    # The model's state sits with its version in the first row, "Traffic and routing".
    latency_row = next(p for p in d["panels"] if p["type"] == "row" and p["title"] == "Latency")
    first_row = {p["title"] for p in d["panels"] if p["gridPos"]["y"] < latency_row["gridPos"]["y"]}
    assert {"Traffic and routing", "Model version", "Model loaded"} <= first_row
    assert "mlguard_model_loaded" in panel("Model loaded")["targets"][0]["expr"]


def test_live_performance_row_holds_its_panels() -> None:
    d = dashboard()
    (row,) = [p for p in d["panels"] if p["type"] == "row" and p["title"] == "Live performance"]
    # Its panels sit between it and the next row down, so Grafana draws them under it.
    below = min((p["gridPos"]["y"] for p in d["panels"]
                 if p["type"] == "row" and p["gridPos"]["y"] > row["gridPos"]["y"]), default=10**6)
    in_row = {p["title"] for p in d["panels"]
              if p["type"] != "row" and row["gridPos"]["y"] < p["gridPos"]["y"] < below}
    assert in_row == LIVE_PANELS
    # The delta panel draws the estimate and both ends of its interval, per metric.
    bounds = [t["expr"] for t in panel("Model minus rules on live labels")["targets"]]
    assert [b for b in ("estimate", "low", "high") if any(f'bound="{b}"' in e for e in bounds)] == [
        "estimate", "low", "high"]
    assert all("by (metric)" in e for e in bounds)


def test_every_metric_the_dashboard_queries_is_defined() -> None:
    """A misspelt metric is no error in PromQL: its panel would just stay empty."""
    defined = set(re.findall(r'"(mlguard_[a-z_]+)"', METRICS_MODULE.read_text()))
    used = {SUFFIXES.sub("", m) for _, expr in dashboard_exprs()
            for m in re.findall(r"\bmlguard_[a-z_]+", expr)}
    assert used - defined == set(), "queried but defined nowhere in monitors/metrics.py"


def test_dashboard_names_no_plugin_domain() -> None:
    found = DOMAIN_WORDS.findall(DASHBOARD.read_text())
    assert not found, f"the dashboard serves every plug-in; found {sorted(set(found))}"
    share = panel("Decision share by route")["targets"][0]["expr"]
    assert "decision=" not in share, "every declared decision or class, none singled out"


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


def regression_rows(n: int) -> list[dict]:
    """Patients as clients send them (the diabetes example's own data)."""
    from apps.diabetes.app import DIABETES_APP
    from apps.diabetes.train import load_data

    names = DIABETES_APP.inputs.names
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items() if k in names}
        for r in load_data().head(n).to_dict("records")
    ]


@pytest.fixture(scope="module")
def regression_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The regression example, trained first if the store lacks it."""
    subprocess.run(
        [sys.executable, "-m", "apps.diabetes.train", "--if-missing"],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )
    config = yaml.safe_load((ROOT / "config" / "diabetes.yaml").read_text())
    config["drift"]["action"] = "alert"  # replayed rows are drift by any measure
    proc = ServerProcess(
        target=REGRESSION_APP,
        workdir=tmp_path_factory.mktemp("regression"),
        config_text=yaml.safe_dump(config),
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def prometheus(
    server: ServerProcess, regression_server: ServerProcess, tmp_path_factory
) -> Iterator[PrometheusProcess]:
    targets = [f"127.0.0.1:{s.port}" for s in (server, regression_server)]
    prom = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), targets, rule_files=[ALERTS])
    prom.start()
    try:
        both_up = 'count(up{job="mlguard"} == 1)'
        assert wait_until(lambda: prom.value(both_up) == 2, timeout_s=30), prom.log_tail()
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def traffic(
    prometheus: PrometheusProcess, server: ServerProcess, regression_server: ServerProcess
) -> PrometheusProcess:
    """Two waves of mixed traffic to both plug-ins, each seen by Prometheus, so every rate() has
    an increase."""
    rows = credit_rows()[:120]
    patients = regression_rows(40)
    with httpx.Client(timeout=30) as c:
        for wave in (0, 1):
            for row in (GOOD_ROW, {**GOOD_ROW, "age": 140}, {**GOOD_ROW, "home": "houseboat"}):
                assert c.post(f"{server.url}/predict", json=row).status_code == 200
            credit = rows[60 * wave: 60 * (wave + 1)]
            assert c.post(f"{server.url}/predict_batch", json={"applications": credit}).status_code == 200
            regression = patients[20 * wave: 20 * (wave + 1)]
            r = c.post(f"{regression_server.url}/predict_batch", json={"patients": regression})
            assert r.status_code == 200, r.text
            # One patient outside the training range: the rules answer it (route heuristic).
            assert c.post(f"{regression_server.url}/predict", json={**patients[0], "bmi": 60.0}).status_code == 200
            expected = sum(
                total(scrape(s.url), "mlguard_requests_total") for s in (server, regression_server)
            )
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
    if where.rsplit(" / ", 1)[0] in CORE_PANELS:  # titles may hold " / " themselves
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


def results(prom: PrometheusProcess, title: str, ref: str = "A") -> list[dict]:
    (target,) = [t for t in panel(title)["targets"] if t["refId"] == ref]
    answer = prom.query(expand(target["expr"]))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_task_panels_show_each_plugin_its_own_shape(traffic: PrometheusProcess) -> None:
    # Decision share: per route, the declared decisions' shares add up to 1 (the credit app's
    # approve and decline; the regression app has no decisions).
    shares: dict[str, float] = {}
    for r in results(traffic, "Decision share by route"):
        shares[r["metric"]["route"]] = shares.get(r["metric"]["route"], 0.0) + float(r["value"][1])
        assert r["metric"]["decision"] in {"approve", "decline"}, r["metric"]
    assert set(shares) >= {"model", "heuristic"}
    assert all(math.isclose(s, 1.0, abs_tol=1e-9) for s in shares.values()), shares
    # Predicted value: the regression app's answers, within its target's range (25 to 346).
    medians = {r["metric"]["route"]: float(r["value"][1]) for r in results(traffic, "Predicted value by route")}
    assert {"model", "heuristic"} <= set(medians), medians
    assert all(25 <= v <= 346 for v in medians.values()), medians
    # Model loaded: both plug-ins have their model.
    (loaded,) = results(traffic, "Model loaded")
    assert float(loaded["value"][1]) == 1.0


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


def test_a_worker_without_its_model_shows_in_the_panel_and_raises_the_alert(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A model tag missing from the store: the worker stays up and the rules answer; the panel
    reads 0 and MlguardModelUnavailable goes pending on the service's real metric."""
    server = ServerProcess(
        workdir=tmp_path_factory.mktemp("no-model"),
        env={"MLGUARD_MODEL__TAG": "credit_risk:notinthestore"},
    ).start()
    try:
        body = httpx.post(f"{server.url}/predict", json=GOOD_ROW, timeout=30).json()
        assert "model.unavailable" in body["reasons"], body
        with scraping(
            tmp_path_factory.mktemp("prometheus-no-model"),
            targets=[f"127.0.0.1:{server.port}"], rule_files=[ALERTS],
        ) as prom:
            (loaded,) = results(prom, "Model loaded")
            assert float(loaded["value"][1]) == 0.0

            def state() -> str | None:
                alerts = prom.api("alerts")["data"]["alerts"]
                return next(
                    (a["state"] for a in alerts if a["labels"]["alertname"] == "MlguardModelUnavailable"),
                    None,
                )

            assert wait_until(lambda: state() in ("pending", "firing"), timeout_s=30)
    finally:
        server.stop()


# ---- model versions: a rollout on real servers -----------------------------------------------


def instance(proc: ServerProcess) -> str:
    return f"127.0.0.1:{proc.port}"


@pytest.fixture(scope="module")
def second_version() -> Iterator[str]:
    """Another version of the credit model, saved under a name of its own with the credit guard
    card (other tests serve credit_risk:latest); deleted afterwards."""
    code = (
        "from apps.credit.app import CREDIT_APP\n"
        "from apps.credit.data import load_credit_data, split_data\n"
        "from training.guard import guard_model\n"
        "s = split_data(load_credit_data())\n"
        "m = guard_model(CREDIT_APP, 'credit_risk:latest', s.train, s.validation, 'status',\n"
        f"                name='credit_risk_dashboard_{os.getpid()}')\n"
        "print('TAG', m.tag)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    tag = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("TAG "))
    yield tag
    subprocess.run([str(Path(sys.executable).parent / "bentoml"), "models", "delete", "-y", tag],
                   cwd=ROOT, capture_output=True, timeout=60, check=False)


def set_model_tag(proc: ServerProcess, tag: str) -> None:
    cfg = yaml.safe_load(proc.config_path.read_text())
    cfg.setdefault("model", {})["tag"] = tag
    staged = proc.config_path.with_suffix(".staged")
    staged.write_text(yaml.safe_dump(cfg))
    os.replace(staged, proc.config_path)  # a worker never reads half a file


def test_a_rollout_shows_two_versions_and_each_swap_outcome(
    server: ServerProcess, second_version: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two instances of one job, as two replicas: one swaps to another version, then is given a tag
    that is not in the store. The panels of the "Model versions" row show it on real metrics."""
    served = httpx.get(f"{server.url}/admin/state", timeout=10).json()["model"]["version"]
    assert served != second_version
    rollout = ServerProcess(workdir=tmp_path_factory.mktemp("rollout")).start()
    prom = PrometheusProcess(
        tmp_path_factory.mktemp("prometheus-rollout"), [instance(server), instance(rollout)], rule_files=[ALERTS]
    ).start()
    try:
        assert wait_until(lambda: prom.value('count(up{job="mlguard"} == 1)') == 2, timeout_s=30), prom.log_tail()
        swaps_seen = f'count(mlguard_model_swaps_total{{instance="{instance(rollout)}"}})'
        assert wait_until(lambda: prom.value(swaps_seen) == 3, timeout_s=30)  # 0 for each outcome

        def versions() -> dict[str, float]:
            return {r["metric"]["model_version"]: float(r["value"][1])
                    for r in results(prom, "Instances serving each model version")}

        assert versions() == {served: 2.0}  # both replicas on one version

        set_model_tag(rollout, second_version)
        assert wait_until(lambda: versions() == {served: 1.0, second_version: 1.0}, timeout_s=30), versions()
        by_instance = {(r["metric"]["instance"], r["metric"]["model_version"])
                       for r in results(prom, "Model version by instance")}
        assert by_instance == {(instance(server), served), (instance(rollout), second_version)}

        def swaps() -> dict[str, float]:
            return {r["metric"]["outcome"]: float(r["value"][1]) for r in results(prom, "Model swaps by outcome")}

        assert wait_until(lambda: swaps().get("swapped", 0) > 0, timeout_s=30), swaps()
        assert set(swaps()) == {"swapped", "failed", "rolled_back"}
        loaded = {r["metric"]["instance"]: float(r["value"][1]) for r in results(prom, "Model loaded by instance")}
        assert loaded == {instance(server): 1.0, instance(rollout): 1.0}
        load_s = {r["metric"]["instance"]: float(r["value"][1]) for r in results(prom, "Model load time")}
        assert load_s[instance(rollout)] > 0 and math.isfinite(load_s[instance(rollout)]), load_s

        # A tag the store lacks: refused, the version served stays, the alert goes pending.
        set_model_tag(rollout, "credit_risk:notinthestore")
        assert wait_until(lambda: swaps().get("failed", 0) > 0, timeout_s=30), swaps()

        def state() -> str | None:
            alerts = prom.api("alerts")["data"]["alerts"]
            return next((a["state"] for a in alerts if a["labels"]["alertname"] == "MlguardModelSwapFailed"), None)

        assert wait_until(lambda: state() in ("pending", "firing"), timeout_s=30)
        assert versions() == {served: 1.0, second_version: 1.0}
    finally:
        prom.stop()
        rollout.stop()
