"""Generate the Kubernetes manifests that copy another file, so they can't drift from it.

- deploy/kubernetes/configmap.yaml carries config/mlguard.yaml verbatim (comments included).
- deploy/kubernetes/monitoring/prometheusrule.yaml carries the groups of deploy/prometheus/alerts.yml.

`make k8s-sync` writes both; `--check` fails if either is stale (tests/test_deploy_files.py checks
the same by content).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "mlguard.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
K8S = ROOT / "deploy" / "kubernetes"
CONFIGMAP = K8S / "configmap.yaml"
PROMETHEUSRULE = K8S / "monitoring" / "prometheusrule.yaml"
NAMESPACE = "mlguard"
LABELS = {"app.kubernetes.io/name": "mlguard", "app.kubernetes.io/part-of": "mlguard"}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL expressions) as literal blocks, as a person would write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _labels(indent: int) -> str:
    pad = " " * indent
    return "".join(f"{pad}{key}: {value}\n" for key, value in LABELS.items())


def render_configmap(config_text: str) -> str:
    body = "".join(f"    {line}\n" if line else "\n" for line in config_text.splitlines())
    text = (
        "# Generated from config/mlguard.yaml by `make k8s-sync`; edit that file, not this one.\n"
        "# Mounted as a directory at /etc/mlguard (never with subPath: a subPath mount is not\n"
        "# updated when the ConfigMap changes). Workers poll it and reload within seconds.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: mlguard-config\n"
        f"  namespace: {NAMESPACE}\n"
        "  labels:\n"
        f"{_labels(4)}"
        "data:\n"
        "  mlguard.yaml: |\n"
        f"{body}"
    )
    if yaml.safe_load(text)["data"]["mlguard.yaml"] != config_text:
        raise SystemExit("config/mlguard.yaml does not survive a YAML literal block; simplify it")
    return text


def render_prometheusrule(groups: list[dict[str, Any]]) -> str:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "mlguard-alerts", "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {"groups": groups},
    }
    header = (
        "# Generated from deploy/prometheus/alerts.yml by `make k8s-sync`; edit that file.\n"
        "# For the Prometheus Operator; its ruleSelector may need a label (e.g. release: <name>).\n"
    )
    text = header + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=100)
    if yaml.safe_load(text)["spec"]["groups"] != groups:
        raise SystemExit("the PrometheusRule does not round-trip alerts.yml's groups")
    return text


def outputs() -> dict[Path, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        CONFIGMAP: render_configmap(CONFIG.read_text()),
        PROMETHEUSRULE: render_prometheusrule(groups),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args()
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(map(str, stale))}; run make k8s-sync", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
