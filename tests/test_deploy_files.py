"""The compose stack and the Kubernetes manifests: they parse, fit together, pass the Kubernetes
schemas (and the Prometheus Operator's CRD schemas) strictly, offline, and pass promtool."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as k8s_schemas  # the API's JSON schemas, shipped in the wheel

from scripts import sync_kubernetes
from scripts.plugin import DEFAULT_APP, resolve
from service.api.auth import ADMIN_TOKEN_ENV, FEEDBACK_TOKEN_ENV, MONITORING_TOKEN_ENV
from service.store.urls import POSTGRESQL, parse_store_url
from service.worker.config import parse
from service.worker.prediction_log import SALT_ENV

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
POSTGRES_COMPONENT = K8S / "components" / "postgres"
WITH_POSTGRES = DEPLOY / "overlays" / "with-postgres"
OPERATOR_CRDS = DEPLOY / "schemas" / "prometheus-operator"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# Every secret the service reads from its environment: never a literal in a manifest.
SECRET_ENVS = (ADMIN_TOKEN_ENV, MONITORING_TOKEN_ENV, FEEDBACK_TOKEN_ENV, SALT_ENV)
STORE_URL_ENV = "MLGUARD_STORE__URL"


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


# No Docker engine nor compose plugin here (`docker compose config` is not available): the file is
# checked as YAML, its wiring asserted below.
def test_compose_declares_the_service_its_store_prometheus_and_grafana() -> None:
    doc = compose()
    assert set(doc["services"]) == {"mlguard", "postgres", "prometheus", "grafana"}
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


def test_compose_service_uses_the_stacks_postgresql_once_it_is_healthy() -> None:
    services = compose()["services"]
    pg, service = services["postgres"], services["mlguard"]
    assert pg["image"] == "postgres:15", "the major is pinned: a data directory is tied to it"
    assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # The data directory is on a declared named volume, so `docker compose down` keeps the store.
    (volume,) = pg["volumes"]
    name, target = volume.split(":")[:2]
    assert target == "/var/lib/postgresql/data" and name in compose()["volumes"]
    check = pg["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "pg_isready"
    assert check[check.index("-h") + 1] == "127.0.0.1", "TCP: not ready during the image's init"

    # The URL the service gets names this server, its user, database and password, whether the
    # password is the stack's default or one set in the shell.
    for shell in ({}, {"POSTGRES_PASSWORD": "s3cret"}):
        url = interpolate(service["environment"][STORE_URL_ENV], **shell)
        assert parse_store_url(url).dialect == POSTGRESQL
        parts = urlsplit(url)
        env = {k: interpolate(v, **shell) for k, v in pg["environment"].items()}
        assert (parts.hostname, parts.port) == ("postgres", 5432)
        assert parts.username == env["POSTGRES_USER"] == check[check.index("-U") + 1]
        assert parts.path.lstrip("/") == env["POSTGRES_DB"] == check[check.index("-d") + 1]
        assert parts.password == env["POSTGRES_PASSWORD"] == shell.get("POSTGRES_PASSWORD", "mlguard")


def test_compose_service_takes_every_token_from_the_shell() -> None:
    env = compose()["services"]["mlguard"]["environment"]
    for name in SECRET_ENVS:
        assert env[name] == f"${{{name}:-}}", f"{name}: from the shell, empty (disabled) by default"


# --- Kubernetes -------------------------------------------------------------------------------

KUSTOMIZE_KINDS = {"Kustomization", "Component"}  # kustomize's own files, not API objects


def objects_of(paths: list[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, object) for every API object in `paths`; kustomize's own files left out."""
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] not in KUSTOMIZE_KINDS:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path
                yield path, doc


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Objects by kind, each kind once."""
    kinds: dict[str, dict[str, Any]] = {}
    for obj in objects:
        assert obj["kind"] not in kinds, f"two {obj['kind']} objects"
        kinds[obj["kind"]] = obj
    return kinds


BASE_FILES = sorted(K8S.glob("*.yaml")) + sorted((K8S / "monitoring").glob("*.yaml"))
COMPONENT_FILES = sorted(POSTGRES_COMPONENT.glob("*.yaml"))


def manifests() -> dict[str, dict[str, Any]]:
    """The objects of deploy/kubernetes/ and its monitoring/, by kind (one object of each kind)."""
    return by_kind([obj for _, obj in objects_of(BASE_FILES)])


def postgres_component() -> dict[str, dict[str, Any]]:
    """The objects of the optional PostgreSQL component, by kind."""
    return by_kind([obj for _, obj in objects_of(COMPONENT_FILES)])


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
    for kind, obj in [*objects.items(), *postgres_component().items()]:
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, kind


# --- Schemas: every object against the API's (kubernetes-validate) or the Operator's CRD ---------

# The oldest Kubernetes the manifests target, and the newest the installed schemas know.
K8S_VERSIONS = ("1.29.0", k8s_schemas.latest_version())
# Every file of API objects; kustomize's own files are checked by rendering them (below).
EVERY_FILE = sorted(
    p for p in [*K8S.rglob("*.yaml"), *(DEPLOY / "overlays").rglob("*.yaml")]
    if any(objects_of([p]))
)


def operator_crd(kind: str, api_version: str) -> dict[str, Any]:
    """The openAPIV3Schema of the Prometheus Operator's CRD for `kind` (deploy/schemas/)."""
    group, version = api_version.split("/")
    for path in sorted(OPERATOR_CRDS.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        if (spec["group"], spec["names"]["kind"]) == (group, kind):
            (served,) = [v for v in spec["versions"] if v["name"] == version]
            return served["schema"]["openAPIV3Schema"]
    raise LookupError(f"no CRD for {kind} ({api_version}) in {OPERATOR_CRDS.relative_to(ROOT)}")


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Unknown fields refused, as the API server's strict field validation (kubectl's default)
    refuses them: an object schema that declares its properties gets additionalProperties false."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(s) for name, s in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    return out


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """x-kubernetes-list-type as the API server applies it: `map` items are unique by their
    x-kubernetes-list-map-keys (e.g. rule groups by name), `set` items are unique."""
    if not validator.is_type(instance, "array") or list_type not in ("map", "set"):
        return
    if list_type == "map":
        keys = [json.dumps([i.get(k) for k in schema["x-kubernetes-list-map-keys"]]) for i in instance]
    else:
        keys = [json.dumps(i, sort_keys=True) for i in instance]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        yield jsonschema.ValidationError(f"duplicate items in a list-type {list_type}: {duplicates}")


# OpenAPI 3.0 schemas are close to JSON Schema draft 4 (boolean exclusiveMinimum and all).
CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type}
)


def schema_errors(obj: dict[str, Any], version: str) -> list[str]:
    """Why `obj` would be refused: against Kubernetes `version`'s schema, or the Operator's CRD."""
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        crd = strict(operator_crd(obj["kind"], obj["apiVersion"]))
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in CrdValidator(crd).iter_errors(obj)
        ]
        # A CRD's schema leaves metadata to the API server, which checks it as any ObjectMeta.
        holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        return errors + schema_errors(holder, version)
    try:
        k8s_schemas.validate(obj, version, strict=True)
    except jsonschema.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"]
    except k8s_schemas.SchemaNotFoundError as e:  # nothing passes for want of a schema
        return [e.message]
    return []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", EVERY_FILE, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_passes_its_schema_strictly(path: Path, version: str) -> None:
    objects = [obj for _, obj in objects_of([path])]
    assert objects
    for obj in objects:
        errors = schema_errors(obj, version)
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}: {errors}"


MISTAKES = {  # case: (the manifest it is made in, what the refusal must say)
    "kind": ("Deployment", "Couldn't find schema for kind Deployement"),
    "deployment container field": ("Deployment", "'imagePullPolicyy' was unexpected"),
    "servicemonitor endpoint field": ("ServiceMonitor", "'intervall' was unexpected"),
    "servicemonitor metadata field": ("ServiceMonitor", "'lables' was unexpected"),
    "prometheusrule group twice": ("PrometheusRule", "duplicate items in a list-type map"),
    "prometheusrule duration": ("PrometheusRule", "'ten minutes' does not match"),
}


def misspelt(obj: dict[str, Any], case: str) -> dict[str, Any]:
    """A copy of `obj` with the mistake `case` names."""
    obj = deepcopy(obj)
    if case == "kind":
        obj["kind"] = "Deployement"
    elif case == "deployment container field":
        obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    elif case == "servicemonitor endpoint field":
        obj["spec"]["endpoints"][0]["intervall"] = "15s"
    elif case == "servicemonitor metadata field":
        obj["metadata"]["lables"] = {"release": "x"}
    elif case == "prometheusrule group twice":
        obj["spec"]["groups"].append(obj["spec"]["groups"][0])
    else:
        obj["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    return obj


@pytest.mark.parametrize("case", MISTAKES)
def test_the_schema_check_refuses_a_mistake(case: str) -> None:
    """The validators bite: each mistake the API server would refuse is refused here too (and a
    kind without a schema is refused, not waved through)."""
    kind, why = MISTAKES[case]
    errors = schema_errors(misspelt(manifests()[kind], case), K8S_VERSIONS[-1])
    assert any(why in error for error in errors), errors


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


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders from a directory; skipped without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its built-in kustomize renders the manifests)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    return list(yaml.safe_load_all(rendered.stdout))


def test_kustomize_renders_the_default_plugin() -> None:
    objects = by_kind(kustomize(K8S))
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "credit_risk:latest"
    assert objects["ConfigMap"]["data"]["mlguard.yaml"] == (ROOT / "config" / "mlguard.yaml").read_text()


@pytest.mark.parametrize("directory", [K8S, WITH_POSTGRES], ids=lambda d: str(d.relative_to(DEPLOY)))
def test_what_kustomize_renders_passes_the_schemas_strictly(directory: Path) -> None:
    """What `kubectl apply -k` would send: the image set, the Secret generated, names rewritten."""
    rendered = kustomize(directory)
    assert {o["kind"] for o in rendered} >= {"Namespace", "ConfigMap", "Deployment", "Service"}
    for obj in rendered:
        for version in K8S_VERSIONS:
            errors = schema_errors(obj, version)
            assert not errors, f"{obj['kind']} {obj['metadata']['name']} ({version}): {errors}"


def test_k8s_sync_for_another_plugin_deploys_its_image_and_its_config(tmp_path: Path) -> None:
    """`make k8s-sync APP=apps.diabetes.app:DiabetesService`, written into a copy of the manifests."""
    plugin = resolve("apps.diabetes.app:DiabetesService")
    own_config = ROOT / "config" / "diabetes.yaml"
    assert own_config.exists()
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    for path, text in sync_kubernetes.outputs(plugin).items():
        (copy / path.relative_to(K8S)).write_text(text)
    objects = by_kind(kustomize(copy))
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


def test_deployment_env_and_config_mount() -> None:
    objects = manifests()
    c = container(objects)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in c["env"]}
    assert env["OMP_NUM_THREADS"]["value"] == "1"

    config = PurePosixPath(env["MLGUARD_CONFIG"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent]
    assert "subPath" not in mount, "a subPath mount is never updated when the ConfigMap changes"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = objects["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config.name in configmap["data"]


def secret_refs(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's environment variables taken from a Secret: name -> its secretKeyRef."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in c["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_deployment_takes_the_store_url_and_every_token_from_secrets() -> None:
    c = container(manifests())
    refs = secret_refs(c)
    literal = {e["name"] for e in c["env"] if "value" in e}
    assert not literal & {STORE_URL_ENV, *SECRET_ENVS}, "a secret never sits in the manifest"
    # The store is required: without it every pod would keep a private SQLite file and the
    # replicas would disagree; a missing Secret stops the rollout instead (CreateContainerConfigError).
    store = refs[STORE_URL_ENV]
    assert store["key"] == "url" and not store.get("optional", False)
    # Tokens and salt: optional each (a missing token disables what it guards), all in one Secret.
    tokens = [refs[name] for name in SECRET_ENVS]
    assert all(ref["optional"] is True for ref in tokens)
    assert len({ref["name"] for ref in tokens}) == 1 and tokens[0]["name"] != store["name"]
    assert len({ref["key"] for ref in tokens}) == len(SECRET_ENVS)


def test_the_state_dir_is_a_small_per_pod_volume_for_the_model_memory_only() -> None:
    """The override lives in the store (no routing.json with store.url set); admin.state_dir keeps
    model.json, the pod's rollback memory, on an emptyDir that outlives a container restart."""
    objects = manifests()
    c = container(objects)
    env = {e["name"]: e for e in c["env"]}
    assert STORE_URL_ENV in secret_refs(c), "the override is shared only with the store configured"
    state = PurePosixPath(env["MLGUARD_ADMIN__STATE_DIR"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == state]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert set(volume) == {"name", "emptyDir"} and volume["emptyDir"]["sizeLimit"] == "16Mi"
    assert len(pod["volumes"]) == 2, "the config and the model memory, nothing else per pod"


# --- The optional PostgreSQL (components/postgres, overlays/with-postgres) ---------------------


def generated_secret(kustomization: Path) -> tuple[str, dict[str, str]]:
    """(name, data) of the one secretGenerator of a kustomization file, from its literals."""
    (generator,) = yaml.safe_load(kustomization.read_text())["secretGenerator"]
    pairs = (literal.split("=", 1) for literal in generator["literals"])
    return generator["name"], {key: value for key, value in pairs}


def test_postgres_component_serves_the_url_it_puts_in_the_store_secret() -> None:
    objects = postgres_component()
    assert set(objects) == {"StatefulSet", "Service"}
    sts, service = objects["StatefulSet"], objects["Service"]
    pod = sts["spec"]["template"]["spec"]
    (pg,) = pod["containers"]
    env = {e["name"]: e for e in pg["env"]}
    name, data = generated_secret(POSTGRES_COMPONENT / "kustomization.yaml")

    # The Secret is the one the Deployment reads, under the key it reads.
    store = secret_refs(container(manifests()))[STORE_URL_ENV]
    assert (name, store["key"] in data) == (store["name"], True)
    # The URL names the Service, its port, the server's user and database, and its password.
    url = data[store["key"]]
    assert parse_store_url(url).dialect == POSTGRESQL
    parts = urlsplit(url)
    (port,) = service["spec"]["ports"]
    assert (parts.hostname, parts.port) == (service["metadata"]["name"], port["port"])
    assert parts.username == env["POSTGRES_USER"]["value"]
    assert parts.path.lstrip("/") == env["POSTGRES_DB"]["value"]
    password = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password["name"] == name and parts.password == data[password["key"]]

    # The Service reaches the pod: headless (the StatefulSet's governing Service), by its labels,
    # on the container's port.
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in pg["ports"]}
    assert ports[port["targetPort"]] == 5432


def test_postgres_component_keeps_its_data_on_a_claim_and_runs_pinned_and_non_root() -> None:
    sts = postgres_component()["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    (pg,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in pg["env"]}
    assert pg["image"] == "postgres:15", "the major is pinned: a data directory is tied to it"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    (mount,) = pg["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    # initdb wants an empty folder it owns: one below the mount point (a fresh volume's root may
    # hold lost+found).
    assert PurePosixPath(env["PGDATA"]).parent == PurePosixPath(mount["mountPath"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 999
    probe = pg["readinessProbe"]["exec"]["command"]
    assert probe[0] == "pg_isready" and probe[probe.index("-h") + 1] == "127.0.0.1"
    assert probe[probe.index("-U") + 1] == env["POSTGRES_USER"]


def test_nothing_of_mlguard_selects_the_postgres_pod_nor_the_reverse() -> None:
    objects = manifests()
    pg = postgres_component()
    pg_labels = pg["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    mlguard_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        objects["Service"]["spec"]["selector"],
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        objects["ServiceMonitor"]["spec"]["selector"]["matchLabels"],
    ]
    assert all(not s.items() <= pg_labels.items() for s in selectors)
    assert not pg["Service"]["spec"]["selector"].items() <= mlguard_labels.items()


def test_the_with_postgres_overlay_renders_the_base_and_the_store_secret() -> None:
    rendered = kustomize(WITH_POSTGRES)
    base = [(o["kind"], o["metadata"]["name"]) for o in kustomize(K8S)]
    kinds = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    (secret,) = [o for o in rendered if o["kind"] == "Secret"]
    assert sorted(kinds) == sorted(
        [*base, ("StatefulSet", "mlguard-postgres"), ("Service", "mlguard-postgres"),
         ("Secret", secret["metadata"]["name"])]
    )
    # kustomize appends the content's hash to the Secret's name and rewrites both references.
    name, data = generated_secret(POSTGRES_COMPONENT / "kustomization.yaml")
    assert secret["metadata"]["name"].startswith(f"{name}-")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == data
    pods = [o["spec"]["template"]["spec"] for o in rendered if o["kind"] in ("Deployment", "StatefulSet")]
    refs = [ref for pod in pods for ref in secret_refs(pod["containers"][0]).values()]
    store_refs = [ref for ref in refs if ref["name"].startswith(name)]
    assert len(store_refs) == 2 and {ref["name"] for ref in store_refs} == {secret["metadata"]["name"]}


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
