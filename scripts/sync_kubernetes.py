"""Generate the Kubernetes manifests that copy another file or name the plug-in, so they can't drift.

For the plug-in `--app module:Service` (default: the credit app; `make k8s-sync APP=...`):
- deploy/kubernetes/configmap.yaml carries the plug-in's config verbatim (comments included):
  config/<app name>.yaml when it exists, else config/mlguard.yaml (service/worker/config.py's choice).
- deploy/kubernetes/kustomization.yaml maps the Deployment's image placeholder, `mlguard-app`, to
  the plug-in's Bento image (`<app name>:latest`, as `bentoml containerize` tags it).
- deploy/kubernetes/monitoring/prometheusrule.yaml carries the groups of deploy/prometheus/alerts.yml.

`--check` fails if any is stale (tests/test_deploy_files.py checks the same by content).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

if not __package__:  # run as `python scripts/<name>.py`: import from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.plugin import DEFAULT_APP, ROOT, Plugin, resolve

CONFIG_DIR = ROOT / "config"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
K8S = ROOT / "deploy" / "kubernetes"
CONFIGMAP = K8S / "configmap.yaml"
KUSTOMIZATION = K8S / "kustomization.yaml"
IMAGE_PLACEHOLDER = "mlguard-app"  # deployment.yaml's image; kustomize's `images:` replaces it
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


def config_of(plugin: Plugin) -> Path:
    own = CONFIG_DIR / f"{plugin.name}.yaml"
    return own if own.exists() else CONFIG_DIR / "mlguard.yaml"


def render_configmap(config_text: str, source: str = "config/mlguard.yaml") -> str:
    body = "".join(f"    {line}\n" if line else "\n" for line in config_text.splitlines())
    text = (
        f"# Generated from {source} by `make k8s-sync`; edit that file, not this one.\n"
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
        raise SystemExit(f"{source} does not survive a YAML literal block; simplify it")
    return text


def render_kustomization(plugin: Plugin) -> str:
    """The core manifests, with the Deployment's image placeholder set to the plug-in's Bento."""
    names = {p.name for p in K8S.glob("*.yaml")} - {KUSTOMIZATION.name, "namespace.yaml"}
    resources = ["namespace.yaml", *sorted(names)]  # the namespace first, as one would read them
    listed = "".join(f"  - {name}\n" for name in resources)
    return (
        f"# Generated for {plugin.target} by `make k8s-sync APP=...`; edit scripts/sync_kubernetes.py.\n"
        "# `kubectl apply -k deploy/kubernetes` (docs/DEPLOY.md) once the Secret mlguard-store holds\n"
        "# the PostgreSQL URL (key url; to try without a PostgreSQL of your own:\n"
        "# deploy/overlays/with-postgres). The monitoring/ resources need the Prometheus Operator's\n"
        "# CRDs and are applied separately. Pin the image in an overlay of your own\n"
        "# (`kustomize edit set image mlguard-app=registry.example.com/<name>:<version>`).\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"{listed}"
        "images:\n"
        f"{_commented(f'  - name: {IMAGE_PLACEHOLDER}', 'the image named in deployment.yaml')}"
        f"{_commented(f'    newName: {plugin.name}', 'the Bento of ' + plugin.target)}"
        f"{_commented('    newTag: latest', '`bentoml containerize` tags the image <name>:<version>')}"
    )


def _commented(line: str, comment: str) -> str:
    return f"{line.ljust(34)}# {comment}\n"


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


def outputs(plugin: Plugin | None = None) -> dict[Path, str]:
    """Each generated file and its text for `plugin` (default: the credit app)."""
    plugin = plugin or resolve(DEFAULT_APP)
    config = config_of(plugin)
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        CONFIGMAP: render_configmap(config.read_text(), str(config.relative_to(ROOT))),
        KUSTOMIZATION: render_kustomization(plugin),
        PROMETHEUSRULE: render_prometheusrule(groups),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=DEFAULT_APP, help=f"module:Service (default {DEFAULT_APP})")
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args()
    stale = []
    for path, text in outputs(resolve(args.app)).items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(map(str, stale))}; run make k8s-sync APP={args.app}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
