"""Models the plug-in cannot serve are refused, never a crash loop; a model that comes later is
picked up without a restart.

Real servers of the tumour plug-in (tests/apps/tumour.py, one worker each), each pointed with
`MLGUARD_MODEL__TAG` at a model saved here under a name of this run (`refusal_*_<run>`, deleted at
the end): a three-class model, a regressor behind a binary guard card, a model saved with plain
`bentoml.sklearn.save_model`, and a tag the store does not have. Each worker stays up and logs one
line naming the fix; the rules answer every row (`model.unavailable`); `/readyz` says ready unless
`model.required` is set.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fallbacks.base import HeuristicResult
from monitors.guard_card import CARD_KEY
from monitors.tasks import Binary, Multiclass
from service.spec import GuardedApp
from tests.apps.train_tumour import TARGET, load_tumour_data, split
from tests.apps.tumour import APP, TumourMeasurements
from tests.support.metrics import scrape, total
from tests.support.server import BENTOML, ROOT, ServerProcess
from tests.support.wait import wait_until

# A long drill: in CI and `make test-all`, not in a local `make test` (Makefile).
pytestmark = pytest.mark.drill

RUN = uuid.uuid4().hex[:8]
REFUSAL_LINE = "model not served, the rules answer every row"
WORKER_UP = "tumour worker up (pid"
PICKUP_S = 40  # the loader retries with backoff up to 10 s between tries; a busy machine is slow


def name(kind: str) -> str:
    return f"refusal_{kind}_{RUN}"


# --- the models -------------------------------------------------------------------------------

class SizeRules:
    """Rules of a three-class plug-in on the same request: the tumour's size band."""

    name = "size_rules"

    def score(self, row: Any) -> HeuristicResult:
        area = row["worst_area"]
        return HeuristicResult(label="small" if area < 600 else "medium" if area < 1100 else "large",
                               rules=("worst_area_band",))


SIZE_APP = GuardedApp(
    name="tumour_size",
    request=TumourMeasurements,
    task=Multiclass(classes=("small", "medium", "large"), safe_default="large"),
    heuristic=SizeRules(),
)


def size_band(frame: Any) -> Any:
    import pandas as pd

    return pd.cut(frame.worst_area, [0, 600, 1100, float("inf")],
                  labels=["small", "medium", "large"]).astype(str)


@dataclass
class Store:
    train: Any
    holdout: Any
    binary: Any  # a fitted binary classifier (benign/malignant), on named columns
    three_class: Any  # a fitted three-class classifier (small/medium/large)
    tags: dict[str, str]  # scenario -> the tag its server is told to serve


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    """Small models, fitted in a second, saved in the shared store under this run's names."""
    import bentoml
    from sklearn.linear_model import LinearRegression
    from sklearn.tree import DecisionTreeClassifier

    from training.guard import build_card, guard_model

    train, holdout = split(load_tumour_data())
    x = train[APP.features.names]
    binary = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, train[TARGET])
    three_class = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, size_band(train))
    regressor = LinearRegression().fit(x, (train[TARGET] == "malignant").astype(float))
    try:
        # (1) A three-class model, guarded by a three-class plug-in, told to the binary one.
        sized_train, sized_holdout = train.assign(size=size_band(train)), holdout.assign(size=size_band(holdout))
        three = guard_model(SIZE_APP, three_class, sized_train, sized_holdout, "size", name=name("three"))
        # (2) A regressor behind a binary guard card (as if the card were copied from a classifier):
        # the model itself is checked, not only its card.
        card = build_card(APP, binary, train, holdout, TARGET)
        regr = bentoml.sklearn.save_model(
            name("regressor"), regressor, custom_objects={CARD_KEY: card.to_custom_object()}
        )
        # (3) A classifier saved with plain bentoml.sklearn.save_model: no guard card.
        plain = bentoml.sklearn.save_model(name("plain"), binary)
        yield Store(train, holdout, binary, three_class, {
            "three_class": str(three.tag),
            "regressor": str(regr.tag),
            "plain": f"{name('plain')}:latest",  # adopted later by the CLI: the new version is latest
            "missing": f"{name('missing')}:latest",  # saved later, once the server runs
            "required": str(plain.tag),
        })
    finally:
        names = {name(k) for k in ("three", "regressor", "plain", "missing")}
        saved = sorted({m.tag.name for m in bentoml.models.list()} & names)
        if saved:  # every version of each name
            subprocess.run([BENTOML, "models", "delete", "-y", *saved], check=False,
                           capture_output=True, timeout=120, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})


# --- the servers ------------------------------------------------------------------------------

class UnreadyServer(ServerProcess):
    """A server whose /readyz may say 503: up once its worker answers /admin/state."""

    def wait_ready(self, timeout_s: float) -> None:
        def worker_up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.url}/admin/state", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(worker_up, timeout_s, interval_s=0.3):
            self.stop()
            raise TimeoutError(f"server not up after {timeout_s}s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def servers(store: Store, tmp_path_factory) -> Iterator[dict[str, ServerProcess]]:
    """One server per scenario, one worker each, started in parallel."""
    procs: dict[str, ServerProcess] = {}
    for scenario, tag in store.tags.items():
        required = scenario == "required"
        env = {"MLGUARD_MODEL__TAG": tag, "MLGUARD_DRIFT__ACTION": "alert"}
        if required:
            env["MLGUARD_MODEL__REQUIRED"] = "true"
        if scenario in ("plain", "missing"):
            # These show adoption and pick-up; the small tree these models are does not beat the
            # tumour rules (AUC 0.99), and the promotion gate has its own tests.
            env["MLGUARD_MODEL__ALLOW_WORSE_THAN_RULES"] = "true"
        procs[scenario] = (UnreadyServer if required else ServerProcess)(
            target="tests.apps.tumour:TumourService",
            workdir=tmp_path_factory.mktemp(f"refusal_{scenario}"),
            workers=1,
            env=env,
        )
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            for future in [pool.submit(p.start, 120) for p in procs.values()]:
                future.result()
        yield procs
    finally:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(lambda p: p.stop(), procs.values()))


@pytest.fixture(scope="module")
def row(store: Store) -> dict[str, float]:
    return {f: float(v) for f, v in store.holdout[APP.inputs.names].iloc[0].items()}


def log_lines(proc: ServerProcess, containing: str) -> list[str]:
    return [line for line in proc.log_text().splitlines() if containing in line]


def admin_state(proc: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{proc.url}/admin/state", timeout=10).json()


# --- (1)-(4): refused, the rules answer, the worker stays up ---------------------------------

REFUSALS = {
    "three_class": "is a multiclass model, the plug-in tumour declares binary",
    "regressor": "a regressor cannot serve the binary plug-in tumour",
    "plain": "python -m training guard-model",
    "missing": "is not in the store",
}


@pytest.mark.parametrize("scenario", list(REFUSALS))
def test_a_refused_model_leaves_the_rules_answering(
    servers: dict[str, ServerProcess], row: dict[str, float], scenario: str
) -> None:
    proc = servers[scenario]
    r = httpx.post(f"{proc.url}/predict", json=row, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"] == "heuristic"
    assert body["reasons"] == ["model.unavailable"]
    assert body["model_version"] == "unavailable"
    assert body["decision"] in ("discharge", "refer") and 0.0 <= body["probability"] <= 1.0
    assert body["rules"]  # the tumour rules answered, not the safe default

    assert httpx.get(f"{proc.url}/readyz", timeout=10).status_code == 200  # model.required: false
    metrics = scrape(proc.url)
    assert total(metrics, "mlguard_model_loaded") == 0
    assert total(metrics, "mlguard_requests_total", route="heuristic", reason="model.unavailable") >= 1

    model = admin_state(proc)["model"]
    assert model["loaded"] is False and model["version"] == "unavailable"
    assert REFUSALS[scenario] in model["problem"]

    # One line naming the problem and its fix, from the one worker, which never restarted.
    refusals = log_lines(proc, REFUSAL_LINE)
    assert len(refusals) == 1, proc.log_tail()
    assert REFUSALS[scenario] in refusals[0]
    assert len(log_lines(proc, REFUSALS[scenario])) == 1, proc.log_tail()
    assert len(log_lines(proc, WORKER_UP)) == 1
    assert len(log_lines(proc, "drift monitoring off")) <= 1  # the drift process says it once
    assert "Traceback" not in proc.log_text()
    assert proc.proc.poll() is None


def test_the_plain_model_refusal_names_its_own_tag(servers: dict[str, ServerProcess]) -> None:
    problem = admin_state(servers["plain"])["model"]["problem"]
    assert f"--model {name('plain')}:" in problem and "saved without mlguard's guard card" in problem


def test_a_required_model_makes_the_worker_unready_not_dead(
    servers: dict[str, ServerProcess], row: dict[str, float], store: Store
) -> None:
    proc = servers["required"]
    assert httpx.get(f"{proc.url}/readyz", timeout=10).status_code == 503
    state = admin_state(proc)
    assert state["model"]["loaded"] is False
    assert "python -m training guard-model" in state["model"]["problem"]
    # Not ready is not down: the process lives, and a request still gets the rules' answer.
    assert proc.proc.poll() is None
    body = httpx.post(f"{proc.url}/predict", json=row, timeout=30).json()
    assert body["route"] == "heuristic" and body["reasons"] == ["model.unavailable"]
    assert len(log_lines(proc, REFUSAL_LINE)) == 1 and len(log_lines(proc, WORKER_UP)) == 1
    assert httpx.get(f"{proc.url}/readyz", timeout=10).status_code == 503


# --- (5) the CLI: refuses a three-class model, adopts a plainly saved one ---------------------

def guard_cli(store: Store, tmp_path: Path, model: str) -> subprocess.CompletedProcess:
    train_csv, holdout_csv = tmp_path / "train.csv", tmp_path / "holdout.csv"
    store.train.to_csv(train_csv, index=False)
    store.holdout.to_csv(holdout_csv, index=False)
    return subprocess.run(
        [sys.executable, "-m", "training", "guard-model", "--app", "tests.apps.tumour:APP",
         "--model", model, "--train", str(train_csv), "--holdout", str(holdout_csv),
         "--target", TARGET],
        check=False, capture_output=True, text=True, timeout=180, cwd=ROOT,
        env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": str(ROOT)},
    )


def test_the_cli_refuses_a_three_class_model_for_a_binary_app(store: Store, tmp_path: Path) -> None:
    import bentoml
    import joblib

    path = tmp_path / "three_class.joblib"
    joblib.dump(store.three_class, path)
    before = {str(m.tag) for m in bentoml.models.list()}
    out = guard_cli(store, tmp_path, str(path))
    assert out.returncode == 2, out.stderr
    refused = [line for line in out.stderr.splitlines() if line.startswith("not guarded:")]
    assert len(refused) == 1, out.stderr
    assert "['benign', 'malignant']" in refused[0] and "large" in refused[0]
    assert "Traceback" not in out.stderr
    assert {str(m.tag) for m in bentoml.models.list()} == before  # nothing saved


@dataclass
class LateModels:
    """What the servers of (5) and (6) get after they started, and their workers' pids before."""

    cli: subprocess.CompletedProcess  # guard-model adopting the plainly saved model
    plain_before: str  # the plainly saved version
    adopted: Any  # the adopted version (stored model)
    missing_saved: Any  # the model saved under the missing tag's name
    pids: dict[str, int]


@pytest.fixture(scope="module")
def late_models(
    servers: dict[str, ServerProcess], store: Store, tmp_path_factory
) -> LateModels:
    """Both saved at once, after the refusal tests, so the two pick-ups are awaited together."""
    import bentoml

    from training.guard import guard_model

    pids = {s: admin_state(servers[s])["worker_pid"] for s in ("plain", "missing")}
    plain_before = str(bentoml.models.get(f"{name('plain')}:latest").tag)
    cli = guard_cli(store, tmp_path_factory.mktemp("adopt"), plain_before)
    adopted = bentoml.models.get(f"{name('plain')}:latest")
    missing_saved = guard_model(APP, store.binary, store.train, store.holdout, TARGET,
                                name=name("missing"))
    return LateModels(cli, plain_before, adopted, missing_saved, pids)


def served_by_model(proc: ServerProcess, row: dict[str, float]) -> bool:
    return httpx.post(f"{proc.url}/predict", json=row, timeout=30).json()["route"] == "model"


def test_the_cli_adopts_a_plainly_saved_model_and_it_is_served(
    servers: dict[str, ServerProcess], late_models: LateModels, row: dict[str, float]
) -> None:
    out, adopted = late_models.cli, late_models.adopted
    assert out.returncode == 0, out.stderr
    # A new version of the same name, with the guard card, saved by the same framework.
    assert str(adopted.tag) != late_models.plain_before and adopted.tag.name == name("plain")
    assert f"saved {adopted.tag}" in out.stdout
    assert adopted.info.module == "bentoml.sklearn" and CARD_KEY in adopted.custom_objects

    # The server told to serve the name's latest version picks it up, without a restart.
    proc = servers["plain"]
    assert wait_until(lambda: served_by_model(proc, row), PICKUP_S, interval_s=1), proc.log_tail()
    body = httpx.post(f"{proc.url}/predict", json=row, timeout=30).json()
    assert body["model_version"] == str(adopted.tag) and body["reasons"] == []
    state = admin_state(proc)
    assert state["worker_pid"] == late_models.pids["plain"] and state["model"]["problem"] is None
    assert total(scrape(proc.url), "mlguard_model_loaded") == 1
    assert len(log_lines(proc, WORKER_UP)) == 1


# --- (6) a model saved after the server started is picked up ----------------------------------

def test_a_missing_model_saved_later_is_picked_up_without_restart(
    servers: dict[str, ServerProcess], late_models: LateModels, row: dict[str, float]
) -> None:
    proc = servers["missing"]
    assert wait_until(lambda: served_by_model(proc, row), PICKUP_S, interval_s=1), proc.log_tail()
    body = httpx.post(f"{proc.url}/predict", json=row, timeout=30).json()
    assert body["model_version"] == str(late_models.missing_saved.tag)
    assert httpx.get(f"{proc.url}/readyz", timeout=10).status_code == 200
    state = admin_state(proc)
    assert state["worker_pid"] == late_models.pids["missing"] and state["model"]["loaded"] is True
    assert total(scrape(proc.url), "mlguard_model_loaded") == 1
    assert len(log_lines(proc, WORKER_UP)) == 1 and proc.proc.poll() is None


# --- a LightGBM wrapper whose class order would be silently inverted once saved ---------------

def test_a_lightgbm_wrapper_in_another_class_order_is_refused_before_saving(store: Store) -> None:
    """bentoml.lightgbm saves the bare booster, which answers P(classes_[1]) in the wrapper's sorted
    order: declared ("malignant", "benign"), it would serve P(malignant) as P(benign)."""
    import bentoml
    import lightgbm as lgb

    from service.scoring.model import ModelRefused
    from training.guard import guard_model

    reversed_app = GuardedApp(
        name="tumour_reversed", request=TumourMeasurements,
        task=Binary(classes=("malignant", "benign"), safe_default="malignant"),
        heuristic=APP.heuristic,
    )
    wrapper = lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(
        store.train[APP.features.names], store.train[TARGET]
    )
    assert list(wrapper.classes_) == ["benign", "malignant"]
    before = {str(m.tag) for m in bentoml.models.list()}
    with pytest.raises(ModelRefused, match="in the declared order"):
        guard_model(reversed_app, wrapper, store.train, store.holdout, TARGET, name=name("three"))
    assert {str(m.tag) for m in bentoml.models.list()} == before
