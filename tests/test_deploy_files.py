"""The compose stack and the Kubernetes manifests: they parse, fit together, and pass promtool."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from scripts import sync_kubernetes
from scripts.plugin import DEFAULT_APP, resolve
from service.worker.config import parse

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing on CI (.ci/run installs the prometheus package)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


# --- docker compose ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: str) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of a compose service's bind mounts; named volumes left out."""
    mounts = []
    for volume in compose()["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE.parent / source).resolve(), PurePosixPath(target)))
    return mounts


def test_compose_declares_the_service_prometheus_and_grafana() -> None:
    doc = compose()
    assert set(doc["services"]) == {"mlguard", "prometheus", "grafana"}
    named = {
        v.split(":")[0]
        for s in doc["services"].values()
        for v in s.get("volumes", [])
        if not v.startswith((".", "/"))
    }
    assert named <= set(doc.get("volumes") or {}), "every named volume is declared"


@pytest.mark.parametrize("service", ["mlguard", "prometheus", "grafana"])
def test_every_file_the_compose_stack_mounts_exists(service: str) -> None:
    mounts = bind_mounts(service)
    assert mounts, f"{service} mounts nothing from the repository"
    missing = [str(host.relative_to(ROOT)) for host, _ in mounts if not host.exists()]
    assert not missing, f"{service} mounts files that are not in the repository: {missing}"


def interpolate(value: str, **env: str) -> str:
    """Compose's `${VAR:-default}` interpolation, with `env` as the shell's environment."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), value)


@pytest.mark.parametrize("config_file", [None, "diabetes.yaml"], ids=["default", "plugin's own"])
def test_the_service_reads_its_config_from_a_mounted_directory(config_file: str | None) -> None:
    env = compose()["services"]["mlguard"]["environment"]
    chosen = {"MLGUARD_CONFIG_FILE": config_file} if config_file else {}
    config = PurePosixPath(interpolate(env["MLGUARD_CONFIG"], **chosen))
    assert config.name == (config_file or "mlguard.yaml")
    (host_dir,) = [host for host, target in bind_mounts("mlguard") if target == config.parent]
    assert host_dir.is_dir(), "a directory mount, so an editor's rename-on-save is seen"
    parse((host_dir / config.name).read_text())


def layout(service: str, root: Path) -> Path:
    """Copy a compose service's bind mounts under `root` at their container paths."""
    for host, target in bind_mounts(service):
        dest = root / target.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, dest)
        else:
            shutil.copy(host, dest)
    return root


def test_compose_prometheus_config_passes_promtool_with_the_alert_rules(tmp_path: Path) -> None:
    root = layout("prometheus", tmp_path)
    command = compose()["services"]["prometheus"]["command"]
    (config_flag,) = [c for c in command if c.startswith("--config.file=")]
    config = root / config_flag.split("=", 1)[1].lstrip("/")
    result = run_promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "alerts.yml" in out and "rules found" in out, out  # the rule file was loaded, not skipped
    rules = sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    assert f"SUCCESS: {rules} rules found" in out, out


def test_compose_prometheus_scrapes_the_service_on_its_port() -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    service = compose()["services"]["mlguard"]
    container_ports = {p.rsplit(":", 1)[1] for p in service["ports"]}
    assert static["targets"] == [f"mlguard:{p}" for p in container_ports]
    assert job["metrics_path"] == "/metrics"


def test_compose_grafana_finds_prometheus_and_the_dashboard() -> None:
    mounts = {str(t): h for h, t in bind_mounts("grafana")}
    datasource = yaml.safe_load(
        mounts["/etc/grafana/provisioning/datasources/prometheus.yml"].read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    # Same name and uid as the repository's generic datasource, which the dashboard is built on.
    generic = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/mlguard-prometheus.yml").read_text()
    )["datasources"][0]
    assert {k: datasource[k] for k in ("name", "uid", "type")} == {
        k: generic[k] for k in ("name", "uid", "type")
    }
    providers_dir = mounts["/etc/grafana/provisioning/dashboards"]
    (provider,) = [
        p for f in providers_dir.glob("*.y*ml") for p in yaml.safe_load(f.read_text())["providers"]
    ]
    dashboards = [t for t in mounts if t.endswith(".json")]
    assert dashboards and all(
        PurePosixPath(t).parent == PurePosixPath(provider["options"]["path"]) for t in dashboards
    ), "the dashboard JSON is mounted where the provider looks"


# --- Kubernetes -------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object under deploy/kubernetes/, by kind (one object of each kind)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["kind"] not in objects, f"two {doc['kind']} objects"
            objects[doc["kind"]] = doc
    return objects


EXPECTED_KINDS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}


def test_every_manifest_parses_with_a_known_kind_in_one_namespace() -> None:
    objects = manifests()
    assert {k: o["apiVersion"] for k, o in objects.items()} == EXPECTED_KINDS
    namespace = objects["Namespace"]["metadata"]["name"]
    for kind, obj in objects.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, kind


def test_kustomization_lists_every_core_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    core = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == core
    # The CRD-backed objects are applied on their own: they need the Prometheus Operator.
    operator = {p.name for p in (K8S / "monitoring").glob("*.yaml")}
    assert operator == {"servicemonitor.yaml", "prometheusrule.yaml"}


def test_kustomization_sets_the_default_plugins_image_on_the_placeholder() -> None:
    (image,) = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]
    assert container(manifests())["image"] == image["name"] == sync_kubernetes.IMAGE_PLACEHOLDER
    assert (image["newName"], image["newTag"]) == (resolve(DEFAULT_APP).name, "latest")
    assert image["newName"] == yaml.safe_load((ROOT / "bentofile.yaml").read_text())["name"]


def kustomize(directory: Path) -> dict[str, dict[str, Any]]:
    """`kubectl kustomize` of a directory, by kind; skipped without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its built-in kustomize renders the manifests)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return {doc["kind"]: doc for doc in yaml.safe_load_all(rendered.stdout)}


def test_kustomize_renders_the_default_plugin() -> None:
    objects = kustomize(K8S)
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "credit_risk:latest"
    assert objects["ConfigMap"]["data"]["mlguard.yaml"] == (ROOT / "config" / "mlguard.yaml").read_text()


def test_k8s_sync_for_another_plugin_deploys_its_image_and_its_config(tmp_path: Path) -> None:
    """`make k8s-sync APP=apps.diabetes.app:DiabetesService`, written into a copy of the manifests."""
    plugin = resolve("apps.diabetes.app:DiabetesService")
    own_config = ROOT / "config" / "diabetes.yaml"
    assert own_config.exists()
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    for path, text in sync_kubernetes.outputs(plugin).items():
        (copy / path.relative_to(K8S)).write_text(text)
    objects = kustomize(copy)
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "diabetes:latest"
    assert objects["ConfigMap"]["data"]["mlguard.yaml"] == own_config.read_text()
    assert "Generated from config/diabetes.yaml" in (copy / "configmap.yaml").read_text()
    # The shared parts are the same for every plug-in.
    for shared in ("deployment.yaml", "service.yaml", "monitoring/prometheusrule.yaml"):
        assert (copy / shared).read_text() == (K8S / shared).read_text(), shared


def test_a_serve_target_that_is_no_plugin_is_refused_with_the_fix() -> None:
    with pytest.raises(SystemExit, match="module:Service"):
        resolve("apps.credit.app")
    with pytest.raises(SystemExit, match="no BentoML service named Nope"):
        resolve("apps.credit.app:Nope")


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def test_deployment_probes_resources_grace_and_non_root() -> None:
    from apps.credit.app import CreditRiskService  # the BentoML service config in force

    objects = manifests()
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    c = container(objects)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert "http" in ports

    assert {"cpu", "memory"} <= set(c["resources"]["requests"])  # the HPA needs the cpu request
    assert "memory" in c["resources"]["limits"]

    timeout = CreditRiskService.config["traffic"]["timeout"]
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > timeout + pre_stop, "in-flight requests finish"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_deployment_env_config_mount_and_secret() -> None:
    objects = manifests()
    c = container(objects)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in c["env"]}
    assert env["OMP_NUM_THREADS"]["value"] == "1"
    token = env["MLGUARD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["name"] and token["key"]
    assert "value" not in env["MLGUARD_ADMIN_TOKEN"], "the token never sits in the manifest"

    config = PurePosixPath(env["MLGUARD_CONFIG"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent]
    assert "subPath" not in mount, "a subPath mount is never updated when the ConfigMap changes"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = objects["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config.name in configmap["data"]

    state = PurePosixPath(env["MLGUARD_ADMIN__STATE_DIR"]["value"])
    assert any(PurePosixPath(m["mountPath"]) == state for m in c["volumeMounts"])


def test_configmap_holds_the_project_config() -> None:
    data = manifests()["ConfigMap"]["data"]["mlguard.yaml"]
    project = (ROOT / "config" / "mlguard.yaml").read_text()
    assert parse(data) == parse(project), "stale ConfigMap: run make k8s-sync"
    assert data == project, "stale ConfigMap (comments): run make k8s-sync"


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    objects = manifests()
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = objects["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    (port,) = service["ports"]
    assert port["targetPort"] in {p["name"] for p in container(objects)["ports"]}

    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
    }
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < hpa["minReplicas"], "a node drain can always evict one pod"


def test_scrape_config_reaches_the_metrics_endpoint() -> None:
    objects = manifests()
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"

    monitor = objects["ServiceMonitor"]["spec"]
    service = objects["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_prometheusrule_carries_exactly_the_alerts_of_alerts_yml() -> None:
    rule = manifests()["PrometheusRule"]
    alerts = yaml.safe_load(ALERTS.read_text())["groups"]
    assert rule["spec"]["groups"] == alerts, "stale PrometheusRule: run make k8s-sync"


def test_prometheusrule_rules_pass_promtool(tmp_path: Path) -> None:
    rule = manifests()["PrometheusRule"]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = run_promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in rule["spec"]["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout + result.stderr


def test_generated_manifests_are_what_the_sync_script_writes() -> None:
    for path, text in sync_kubernetes.outputs().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run make k8s-sync"
