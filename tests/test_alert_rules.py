"""deploy/prometheus/alerts.yml: valid for promtool, unit-tested firing and not firing, and
complete enough for the on-call (a `for:`, a severity, a summary and a description each)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support.prometheus import require_binary

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
METRICS_MODULE = ROOT / "monitors" / "metrics.py"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
# The list; later work adds its own alerts beside these.
REQUIRED = {
    "MlguardHighFallbackRatio",
    "MlguardModelErrors",
    "MlguardModelTimeouts",
    "MlguardModelInvalidOutput",
    "MlguardConfigReloadFailed",
    "MlguardNoTraffic",
    "MlguardFaultDrillActive",
    "MlguardModelUnavailable",
    "MlguardModelSwapFailed",
    "MlguardModelRolledBack",
    # live labels and the prediction log (issue 13)
    "MlguardModelWorseThanRules",
    "MlguardLabelsStopped",
    "MlguardPredictionLogDropping",
    "MlguardStoreDown",
}
# The rules serve every plug-in: no plug-in's domain in their words.
DOMAIN_WORDS = re.compile(r"approv|declin|credit|loan|lend", re.IGNORECASE)
# What prometheus_client appends to a metric's name on exposition.
SUFFIXES = re.compile(r"_(total|bucket|sum|count)$")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=PROM_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for g in groups for rule in g["rules"] if "alert" in rule]


def test_promtool_check_rules_accepts_the_file() -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    every_rule = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert f"SUCCESS: {len(every_rule)} rules found" in checked.stdout


def test_promtool_unit_tests_pass() -> None:
    tested = promtool("test", "rules", ALERTS_TEST.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_example_scrape_config_is_valid() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_tells_the_on_call_what_to_do() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert REQUIRED <= set(names)
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']}: no `for:`, it would page on a single blip"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, rule["alert"]
        notes = rule.get("annotations", {})
        assert notes.get("summary") and len(notes.get("description", "")) > 80, rule["alert"]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    firing, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_alerts_name_no_plugin_domain() -> None:
    for path in (ALERTS, ALERTS_TEST):
        found = DOMAIN_WORDS.findall(path.read_text())
        assert not found, f"{path.name} serves every plug-in; found {sorted(set(found))}"


def test_model_unavailable_watches_the_model_loaded_gauge_and_pages() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "MlguardModelUnavailable"]
    assert "mlguard_model_loaded" in rule["expr"] and "== 0" in rule["expr"]
    assert rule["for"] == "5m" and rule["labels"]["severity"] == "critical"
    assert "model.unavailable" in rule["annotations"]["description"]


def test_swap_alerts_watch_their_own_outcome_of_the_swap_counter() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    for name, outcome in (("MlguardModelSwapFailed", "failed"), ("MlguardModelRolledBack", "rolled_back")):
        expr = rules[name]["expr"]
        assert "increase(mlguard_model_swaps_total" in expr, name
        assert f'outcome="{outcome}"' in expr and expr.count("outcome=") == 1, name
        assert "by (job)" in expr, name  # one alert per deployment, not per worker
    # Each names the log line and the admin field that say what happened to which version.
    assert "model swap to <tag> failed" in rules["MlguardModelSwapFailed"]["annotations"]["description"]
    assert "rolled back to" in rules["MlguardModelRolledBack"]["annotations"]["description"]


def defined_metrics() -> set[str]:
    """The metric names monitors/metrics.py creates (every metric is defined there, once)."""
    return set(re.findall(r'"(mlguard_[a-z_]+)"', METRICS_MODULE.read_text()))


def queried_metrics(text: str) -> set[str]:
    return {SUFFIXES.sub("", name) for name in re.findall(r"\bmlguard_[a-z_]+", text)}


def test_every_metric_the_rules_query_is_defined() -> None:
    """A misspelt metric is no error in PromQL: the alert would just never fire."""
    exprs = "\n".join(r["expr"] for r in alert_rules())
    used = queried_metrics(exprs)
    assert used - defined_metrics() == set(), "queried but defined nowhere in monitors/metrics.py"
    # The live-label contract is watched end to end.
    assert {"mlguard_model_vs_rules_delta", "mlguard_performance_below_rules", "mlguard_labelled_rows",
            "mlguard_feedback", "mlguard_prediction_log_rows", "mlguard_store_up"} <= used


def test_worse_than_rules_needs_the_interval_below_zero_on_enough_labels_or_the_policy() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    expr = rules["MlguardModelWorseThanRules"]["expr"]
    # The interval's upper end, not the estimate: below 0 means worse with confidence.
    assert 'mlguard_model_vs_rules_delta{bound="high"}) < 0' in expr
    assert "mlguard_labelled_rows) >= 200" in expr  # the default performance.min_labels
    assert "mlguard_performance_below_rules) == 1" in expr
    assert "by (job, metric)" in expr and "or on (job)" in expr  # one alert per job and metric
    assert "performance.below_rules" in rules["MlguardModelWorseThanRules"]["annotations"]["description"]


def test_labels_stopped_counts_accepted_outcomes_only_and_needs_traffic() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "MlguardLabelsStopped"]
    expr = rule["expr"]
    # unknown, invalid, conflict and duplicate answers carry no new outcome
    assert expr.count('mlguard_feedback_total{outcome=~"recorded|pending"}') == 2
    assert "increase(mlguard_requests_total[1h])) > 0" in expr


def test_store_alerts_watch_dropped_rows_and_the_lowest_worker() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    dropping = rules["MlguardPredictionLogDropping"]
    assert 'mlguard_prediction_log_rows_total{outcome="dropped"}' in dropping["expr"]
    down = rules["MlguardStoreDown"]
    assert "min by (job) (mlguard_store_up) == 0" in down["expr"]
    assert down["for"] == "1m" and down["labels"]["severity"] == "critical"
