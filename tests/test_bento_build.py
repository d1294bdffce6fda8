"""`make build` makes a Bento; `bentoml serve <tag>` of it answers; its image is fit to ship.

The default plug-in's Bento (the credit app) and another one's (`make build APP=` the diabetes
example) are built once for this module (about 10 s each) into $BENTOML_HOME and deleted
afterwards. No Docker engine here: the image is tested through the build context and Dockerfile
that `bentoml containerize` hands to the engine, made by the same BentoML function.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml

from service.worker.config import parse
from tests.support.data import GOOD_ROW
from tests.support.server import BENTOML, ServerProcess
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("BENTOML_HOME", str(ROOT / ".bentoml")))
CONFIG_TEXT = (ROOT / "config" / "mlguard.yaml").read_text()
OTHER_APP = "apps.diabetes.app:DiabetesService"  # a regression plug-in with a config of its own
SERVING_DIRS = {"service", "monitors", "fallbacks", "config", "apps", "bentofile.yaml"}


@dataclass(frozen=True)
class Bento:
    tag: str
    path: Path

    @property
    def info(self) -> dict:
        return yaml.safe_load((self.path / "bento.yaml").read_text())


def make_build(*args: str) -> Bento:
    # -o: the venv running these tests is the installed one; make must not reinstall it.
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "-o", ".venv/.installed", "build",
         f"BENTOML_HOME={HOME}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tag = result.stdout.strip().splitlines()[-1]  # last: training may talk first if it trains
    name, version = tag.split(":")
    return Bento(tag, HOME / "bentos" / name / version)


def delete(bento: Bento) -> None:
    subprocess.run([BENTOML, "delete", bento.tag, "-y"], env={**os.environ, "BENTOML_HOME": str(HOME)},
                   capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def bento() -> Iterator[Bento]:
    built = make_build()
    yield built
    delete(built)


@pytest.fixture(scope="module")
def other_bento() -> Iterator[Bento]:
    """`make build APP=apps.diabetes.app:DiabetesService`, its model trained first if missing."""
    subprocess.run(
        [str(Path(BENTOML).parent / "python"), "-m", "apps.diabetes.train", "--if-missing"],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
        env={**os.environ, "BENTOML_HOME": str(HOME)},
    )
    built = make_build(f"APP={OTHER_APP}")
    yield built
    delete(built)


def latest(model: str) -> str:
    return f"{model}:{(HOME / 'models' / model / 'latest').read_text().strip()}"


class BentoServer(ServerProcess):
    """ServerProcess for a built Bento: its private BentoML home also sees the Bento store."""

    def bentoml_home(self) -> Path:
        home = super().bentoml_home()
        bentos = home / "bentos"
        if not bentos.exists():
            bentos.symlink_to((HOME / "bentos").resolve(), target_is_directory=True)
        return home


class BareBentoServer(BentoServer):
    """As a container starts it: no MLGUARD_CONFIG, no repository on the path, not run from it."""

    def env(self) -> dict[str, str]:
        env = super().env()
        del env["MLGUARD_CONFIG"]
        env.pop("PYTHONPATH", None)
        return env


def predict(server: ServerProcess) -> dict:
    r = httpx.post(f"{server.url}/predict", json=GOOD_ROW, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_make_build_prints_the_tag_of_a_stored_bento(bento: Bento) -> None:
    assert re.fullmatch(r"credit_risk:[a-z0-9]+", bento.tag), bento.tag
    assert f"{bento.info['name']}:{bento.info['version']}" == bento.tag


def test_bento_holds_the_serving_code_default_config_and_model_only(bento: Bento) -> None:
    src = bento.path / "src"
    for module in ("apps/credit/app.py", "apps/credit/rules.py", "service/factory.py",
                   "monitors/metrics.py", "fallbacks/base.py"):
        assert (src / module).is_file(), module
    assert (src / "config" / "mlguard.yaml").read_text() == CONFIG_TEXT
    assert {p.name for p in src.iterdir()} == SERVING_DIRS, "training, tests, data and the venv stay out"
    # Serving never imports training code: neither training/ nor the apps' training scripts.
    assert not list(src.rglob("train.py")) and not list(src.rglob("train_*.py"))
    assert not list(src.rglob("*.csv"))
    assert not list(src.rglob("__pycache__")) and not list(src.rglob("*.pyc"))
    assert [m["tag"] for m in bento.info["models"]] == [latest("credit_risk")]
    assert bento.info["service"] == "apps.credit.app:CreditRiskService"


def test_make_build_app_builds_that_plugins_bento(other_bento: Bento) -> None:
    """Its name, service and model are the plug-in's; its own config is the bundled default."""
    assert re.fullmatch(r"diabetes:[a-z0-9]+", other_bento.tag), other_bento.tag
    info = other_bento.info
    assert info["service"] == OTHER_APP
    assert [m["tag"] for m in info["models"]] == [latest("diabetes")]
    src = other_bento.path / "src"
    assert {p.name for p in src.iterdir()} == SERVING_DIRS
    assert (src / "apps" / "diabetes" / "app.py").is_file()
    assert not (src / "apps" / "diabetes" / "train.py").exists()
    assert (src / "config" / "diabetes.yaml").read_text() == (ROOT / "config" / "diabetes.yaml").read_text()
    bentofile = yaml.safe_load((src / "bentofile.yaml").read_text())
    envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert envs["MLGUARD_CONFIG"].endswith("/src/config/diabetes.yaml")
    # Everything else is the default plug-in's packaging, written once in bentofile.yaml.
    base = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["requirements_txt"].endswith(base["python"]["requirements_txt"])
    assert bentofile["docker"]["python_version"] == base["docker"]["python_version"]


def pins(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def test_bento_installs_exactly_the_locked_requirements(bento: Bento) -> None:
    fresh = subprocess.run(
        [str(Path(BENTOML).parent / "python"), "scripts/lock_requirements.py", "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert fresh.returncode == 0, fresh.stderr  # the lock matches pyproject.toml and constraints.txt
    lock = pins((ROOT / "requirements.lock.txt").read_text())
    assert pins((bento.path / "env" / "python" / "requirements.txt").read_text()) == lock
    assert "bentoml==1.4.40" in lock and all("==" in p for p in lock)


@dataclass(frozen=True)
class BentoServers:
    configured: BentoServer  # MLGUARD_CONFIG -> a temp file with routing.mode: fallback
    bare: BareBentoServer  # no MLGUARD_CONFIG: the config bundled in the Bento
    other: BareBentoServer  # the other plug-in's Bento, bare as well


@pytest.fixture(scope="module")
def served(
    bento: Bento, other_bento: Bento, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BentoServers]:
    forced = CONFIG_TEXT.replace("mode: auto", "mode: fallback")
    assert forced != CONFIG_TEXT
    bare_dir = tmp_path_factory.mktemp("bare-bento")
    other_dir = tmp_path_factory.mktemp("other-bento")
    servers = BentoServers(
        BentoServer(target=bento.tag, workdir=tmp_path_factory.mktemp("bento"), config_text=forced),
        BareBentoServer(target=bento.tag, workdir=bare_dir, cwd=bare_dir),
        BareBentoServer(target=other_bento.tag, workdir=other_dir, cwd=other_dir),
    )
    both = (servers.configured, servers.bare, servers.other)
    try:
        with ThreadPoolExecutor(len(both)) as pool:  # start side by side: half the waiting
            list(pool.map(lambda s: s.start(), both))
        yield servers
    finally:
        with ThreadPoolExecutor(len(both)) as pool:
            list(pool.map(lambda s: s.stop(), both))


def test_served_bento_answers_predict_with_the_config_from_the_environment(
    bento: Bento, served: BentoServers
) -> None:
    body = predict(served.configured)
    assert body["route"] == "heuristic" and "config.forced" in body["reasons"]
    assert body["model_version"] == bento.info["models"][0]["tag"]


def test_served_bento_runs_on_its_bundled_config_without_the_repository(
    served: BentoServers,
) -> None:
    body = predict(served.bare)
    assert body["route"] == "model", body  # the bundled config: routing.mode auto


PATIENT = {"age": 50, "sex": 1, "bmi": 26.0, "bp": 94.0, "s1": 190.0, "s2": 115.0,
           "s3": 50.0, "s4": 4.0, "s5": 4.6, "s6": 91.0}


def test_another_plugins_bento_serves_its_own_answers_and_config(
    other_bento: Bento, served: BentoServers
) -> None:
    r = httpx.post(f"{served.other.url}/predict", json=PATIENT, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"] == "model", body
    assert body["model_version"] == other_bento.info["models"][0]["tag"]
    assert isinstance(body["value"], float) and "decision" not in body
    # Its own config/diabetes.yaml (bundled), not the default: its drift window is the smaller one.
    own = parse((ROOT / "config" / "diabetes.yaml").read_text())
    assert own.drift.window_size != parse(CONFIG_TEXT).drift.window_size

    def drift_window() -> int | None:
        return httpx.get(f"{served.other.url}/monitoring/drift", timeout=30).json().get("window_size")

    assert wait_until(lambda: drift_window() == own.drift.window_size, timeout_s=30), drift_window()


# --- the container, through its Dockerfile ------------------------------------------------------


@dataclass
class Dockerfile:
    instructions: list[tuple[str, str]]
    variables: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Dockerfile:
        logical = re.sub(r"\\\n", " ", text)
        instructions = []
        variables: dict[str, str] = {}
        for line in logical.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            op, _, arg = line.partition(" ")
            op = op.upper()
            if op in ("ARG", "ENV") and "=" in arg:
                name, _, value = arg.partition("=")
                variables[name] = cls.expand(value, variables)
            instructions.append((op, arg))
        return cls(instructions, variables)

    @staticmethod
    def expand(value: str, variables: dict[str, str]) -> str:
        value = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), value)
        return " ".join(shlex.split(value)) if value else value

    def all(self, op: str) -> list[str]:
        return [self.expand(arg, self.variables) for o, arg in self.instructions if o == op]


@pytest.fixture(scope="module")
def build_context(bento: Bento) -> Iterator[Path]:
    """The directory `bentoml containerize` would send to the Docker engine."""
    import bentoml
    from bentoml._internal.container import construct_containerfile

    with construct_containerfile(bentoml.bentos.get(bento.tag)) as (context, _):
        yield Path(context)


@pytest.fixture(scope="module")
def dockerfile(build_context: Path) -> Dockerfile:
    return Dockerfile.parse((build_context / "env" / "docker" / "Dockerfile").read_text())


def test_image_build_context_carries_the_model_and_the_code(
    bento: Bento, build_context: Path
) -> None:
    name, version = bento.info["models"][0]["tag"].split(":")
    model = build_context / "models" / name / version
    assert (model / "model.yaml").is_file() and (model / "saved_model.pkl").is_file()
    assert (build_context / "src" / "apps" / "credit" / "app.py").is_file()
    assert (build_context / "env" / "docker" / "entrypoint.sh").is_file()


def test_container_runs_as_a_non_root_user(dockerfile: Dockerfile) -> None:
    ops = [op for op, _ in dockerfile.instructions]
    user = dockerfile.all("USER")[-1]
    assert user not in ("root", "0")
    assert ops.index("ENTRYPOINT") > len(ops) - 1 - ops[::-1].index("USER"), "USER before start"
    assert int(dockerfile.variables["BENTO_USER_UID"]) > 0
    assert dockerfile.variables["BENTO_USER"] == user
    assert any("useradd" in run and "-u $BENTO_USER_UID" in run for _, run in dockerfile.instructions)


def test_container_exposes_the_port_the_deployments_use(dockerfile: Dockerfile) -> None:
    exposed = {int(p) for arg in dockerfile.all("EXPOSE") for p in arg.split()}
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert {p["containerPort"] for p in c["ports"]} <= exposed
    assert pod["securityContext"]["runAsUser"] == int(dockerfile.variables["BENTO_USER_UID"])
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    assert {int(p.rsplit(":", 1)[1]) for p in compose["services"]["mlguard"]["ports"]} <= exposed


def test_container_takes_the_config_path_from_the_environment(
    bento: Bento, dockerfile: Dockerfile
) -> None:
    assert dockerfile.variables["OMP_NUM_THREADS"] == "1"
    # ENV, so `docker run -e` / a pod's env override it; by default the Bento's own config file.
    config = PurePosixPath(dockerfile.variables["MLGUARD_CONFIG"])
    inside = config.relative_to(dockerfile.variables["BENTO_PATH"])
    assert inside == PurePosixPath("src/config/mlguard.yaml")
    parse((bento.path / inside).read_text())
    # service/worker/config.py's own default resolves to the same file inside the Bento.
    probe = subprocess.run(
        [str(Path(BENTOML).parent / "python"), "-c",
         "import service.worker.config as c; print(c.DEFAULT_CONFIG_PATH)"],
        cwd=bento.path / "src", capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == bento.path / inside
