"""`make build` makes a Bento; `bentoml serve <tag>` of it answers; its image is fit to ship.

The Bento is built once for this module (about 10 s) into $BENTOML_HOME and deleted afterwards.
No Docker engine here: the image is tested through the build context and Dockerfile that
`bentoml containerize` hands to the engine, made by the same BentoML function.
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

from service.config import parse
from tests.support.data import GOOD_ROW
from tests.support.server import BENTOML, ServerProcess

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("BENTOML_HOME", str(ROOT / ".bentoml")))
CONFIG_TEXT = (ROOT / "config" / "mlguard.yaml").read_text()


@dataclass(frozen=True)
class Bento:
    tag: str
    path: Path

    @property
    def info(self) -> dict:
        return yaml.safe_load((self.path / "bento.yaml").read_text())


@pytest.fixture(scope="module")
def bento() -> Iterator[Bento]:
    # -o: the venv running these tests is the installed one; make must not reinstall it.
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "-o", ".venv/.installed", "build",
         f"BENTOML_HOME={HOME}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tag = result.stdout.strip().splitlines()[-1]  # last: training may talk first if it trains
    name, version = tag.split(":")
    yield Bento(tag, HOME / "bentos" / name / version)
    subprocess.run([BENTOML, "delete", tag, "-y"], env={**os.environ, "BENTOML_HOME": str(HOME)},
                   capture_output=True, timeout=60, check=False)


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
    for module in ("service/credit_service.py", "monitors/metrics.py", "fallbacks/credit_rules.py"):
        assert (src / module).is_file(), module
    assert (src / "config" / "mlguard.yaml").read_text() == CONFIG_TEXT
    assert {p.name for p in src.iterdir()} == {
        "service", "monitors", "fallbacks", "config", "bentofile.yaml"
    }, "training, tests, data and the venv stay out"
    assert not list(src.rglob("__pycache__")) and not list(src.rglob("*.pyc"))
    latest = (HOME / "models" / "credit_risk" / "latest").read_text().strip()
    assert [m["tag"] for m in bento.info["models"]] == [f"credit_risk:{latest}"]


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


@pytest.fixture(scope="module")
def served(bento: Bento, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServers]:
    forced = CONFIG_TEXT.replace("mode: auto", "mode: fallback")
    assert forced != CONFIG_TEXT
    bare_dir = tmp_path_factory.mktemp("bare-bento")
    servers = BentoServers(
        BentoServer(target=bento.tag, workdir=tmp_path_factory.mktemp("bento"), config_text=forced),
        BareBentoServer(target=bento.tag, workdir=bare_dir, cwd=bare_dir),
    )
    both = (servers.configured, servers.bare)
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
    assert (build_context / "src" / "service" / "credit_service.py").is_file()
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
    # service/config.py's own default resolves to the same file inside the Bento.
    probe = subprocess.run(
        [str(Path(BENTOML).parent / "python"), "-c",
         "import service.config as c; print(c.DEFAULT_CONFIG_PATH)"],
        cwd=bento.path / "src", capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == bento.path / inside
