"""Two plug-ins served at once from one checkout, each with `make serve APP=... PORT=...`: the
credit app and the README's spam filter (its module and model made by the README's own steps).

Each keeps its own metrics (BentoML's Prometheus multiprocess directory lives under the
BENTOML_HOME that `make serve` gives each app) and its own admin state
(`admin.state_dir/<app name>/`), while sharing one model store.
"""
from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.support.server import ROOT, free_port
from tests.test_readme_guide import (
    MakeServe,
    code_blocks,
    guide_section,
    make_copy,
    prepare_guide,
    serve_block,
    user_env,
)

TOKEN = "two-plugins-token"
CREDIT_ROW = {
    "seniority": 9, "home": "rent", "time": 60, "age": 30, "marital": "married", "records": "no",
    "job": "freelance", "expenses": 73, "income": 129.0, "assets": 0.0, "debt": 0.0,
    "amount": 800, "price": 846,
}
MAIL = {"from": "company", "links": 1, "exclamations": 0, "caps_ratio": 0.05, "words": 300}
CREDIT_N, SPAM_M = 7, 4


def share_credit_model(workdir) -> None:
    """The project's guarded credit model in the copy's store (else `make serve` trains it)."""
    models = ROOT / ".bentoml" / "models" / "credit_risk"
    latest = models / "latest"
    if latest.is_file():
        version = latest.read_text().strip()
        dest = workdir / ".bentoml" / "models" / "credit_risk"
        shutil.copytree(models / version, dest / version)
        (dest / "latest").write_text(version)


def requests_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("mlguard_requests_total{")
    )


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    workdir = make_copy(tmp_path_factory.mktemp("two_plugins") / "project")
    env = {**user_env(workdir), "MLGUARD_ADMIN_TOKEN": TOKEN}
    prepare_guide(workdir, env)  # my_app.py and the guarded spam model, as the README makes them
    share_credit_model(workdir)
    credit_port, spam_port = free_port(), free_port()
    spam_serve = serve_block(code_blocks(guide_section()))
    servers = {
        "credit": MakeServe(f"make serve PORT={credit_port}", workdir, env, workdir / "credit.log"),
        "spam": MakeServe(spam_serve.replace("3001", str(spam_port)), workdir, env,
                          workdir / "spam.log"),
    }
    urls = {"credit": f"http://127.0.0.1:{credit_port}", "spam": f"http://127.0.0.1:{spam_port}"}
    try:
        for name, server in servers.items():
            server.wait_ready(urls[name], timeout_s=180)  # credit may train its model first
        yield {"workdir": workdir, "urls": urls}
    finally:
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.stop()


def test_each_metrics_endpoint_counts_only_its_own_predictions(two):
    credit, spam = two["urls"]["credit"], two["urls"]["spam"]
    assert requests_total(credit) == 0 and requests_total(spam) == 0
    for _ in range(CREDIT_N):
        assert httpx.post(f"{credit}/predict", json=CREDIT_ROW, timeout=10).status_code == 200
    for _ in range(SPAM_M):
        assert httpx.post(f"{spam}/predict", json=MAIL, timeout=10).status_code == 200
    assert requests_total(credit) == CREDIT_N
    assert requests_total(spam) == SPAM_M
    info = {
        name: [ln for ln in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
               if ln.startswith("mlguard_model_info{")]
        for name, url in two["urls"].items()
    }
    assert info["credit"] and all("credit_risk:" in ln and "spam:" not in ln for ln in info["credit"])
    assert info["spam"] and all("spam:" in ln and "credit_risk:" not in ln for ln in info["spam"])


def test_an_admin_override_of_one_does_not_force_the_other(two):
    credit, spam = two["urls"]["credit"], two["urls"]["spam"]
    r = httpx.post(f"{spam}/admin/routing", json={"mode": "fallback"},
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30  # the override reaches every worker within about a second
    while time.monotonic() < deadline:
        answer = httpx.post(f"{spam}/predict", json=MAIL, timeout=10).json()
        if answer["reasons"] == ["admin.forced"]:
            break
        time.sleep(0.2)
    assert answer["route"] == "heuristic" and answer["reasons"] == ["admin.forced"]
    assert httpx.get(f"{spam}/admin/state", timeout=10).json()["mode"]["admin"] == "fallback"

    credit_answer = httpx.post(f"{credit}/predict", json=CREDIT_ROW, timeout=10).json()
    assert "admin.forced" not in credit_answer["reasons"]
    credit_state = httpx.get(f"{credit}/admin/state", timeout=10).json()
    assert credit_state["mode"]["admin"] is None and credit_state["mode"]["effective"] == "auto"

    state_dir = two["workdir"] / ".mlguard"
    assert (state_dir / "spam" / "routing.json").is_file()
    assert not (state_dir / "credit_risk" / "routing.json").exists()
