"""The README's "Guard your own model", run word for word on an empty model store.

The section's code blocks are read from README.md and run as a new user would: the module it shows
is written to the file it names, the shell blocks run with bash from the project root (a copy of
the checkout in a temporary directory, so nothing is left behind; its `.bentoml/` store starts
empty), `make serve` runs in the background (only its port substituted) and the curl block asks
it. The answers and the printed yardstick must be the ones the README shows.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import ROOT, descendants, free_port

# A long drill: in CI and `make test-all`, not in a local `make test` (Makefile).
pytestmark = pytest.mark.drill

SECTION = "## Guard your own model"
README_PORT = "3001"


def guide_section(readme: Path = ROOT / "README.md") -> str:
    text = readme.read_text()
    start = text.index(SECTION + "\n")
    end = re.compile(r"^## ", re.MULTILINE).search(text, start + len(SECTION))
    return text[start : end.start() if end else len(text)]


def code_blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)]


def module_blocks(blocks) -> dict[str, str]:
    """Python blocks that open with `# <file>.py`: the files the guide has the user write."""
    out = {}
    for lang, code in blocks:
        m = re.match(r"# (\w+\.py)\b", code) if lang == "python" else None
        if m:
            out[m[1]] = code
    return out


def make_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, as in the working tree) in `dest`, with a `.venv` that links
    the project's: a fresh install stamp, so `make` never reinstalls into the shared venv."""
    listed = subprocess.run(  # tracked and new files, as in the working tree; not ignored ones
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.split(b"\0")
    files = b"\0".join(f for f in listed if f and (ROOT / f.decode()).is_file())
    subprocess.run(
        ["rsync", "-a", "--from0", "--files-from=-", f"{ROOT}/", f"{dest}/"],
        input=files, check=True,
    )
    venv = dest / ".venv"
    venv.mkdir()
    for entry in (ROOT / ".venv").iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()
    return dest


def user_env(workdir: Path) -> dict[str, str]:
    """A new user's shell: none of the test session's mlguard settings; the store is the copy's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLGUARD_") and k != "PYTHONPATH"}
    env.update(BENTOML_HOME=str(workdir / ".bentoml"), BENTOML_DO_NOT_TRACK="true")
    return env


def run_bash(code: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], check=False, cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, f"{code}\n-> exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


class MakeServe:
    """`make serve ...` in the background, in its own process group; stop() ends it all."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 -- closed by stop()
        self.proc = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, env=env, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._family: list[int] | None = None

    def wait_ready(self, url: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"make serve exited:\n{self.log.read_text()[-4000:]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"not ready after {timeout_s}s:\n{self.log.read_text()[-4000:]}")

    def terminate(self) -> None:
        """SIGTERM to the group (several servers can be asked at once, then stopped)."""
        if self._family is None:
            self._family = descendants(self.proc.pid)  # BentoML's workers have groups of their own
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self._family is None:
            self.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        family = self._family
        for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL),
                     *[(lambda p=p: os.kill(p, signal.SIGKILL)) for p in family]):
            try:
                kill()
            except ProcessLookupError:
                pass
        self.proc.wait(5)
        self._log.close()


def serve_block(blocks) -> str:
    (code,) = [c for lang, c in blocks if lang == "bash" and "make serve" in c]
    return code


def guard_and_setup_blocks(blocks) -> list[str]:
    return [c for lang, c in blocks if lang == "bash" and "make serve" not in c and "curl" not in c]


def prepare_guide(workdir: Path, env: dict[str, str]) -> dict[str, str]:
    """Steps 0 to 2 of the guide, in order: write the module, run the shell blocks.
    Returns each shell block's output."""
    blocks = code_blocks(guide_section())
    outputs = {}
    for lang, code in blocks:
        if lang == "python" and code in module_blocks(blocks).values():
            (workdir / re.match(r"# (\w+\.py)", code)[1]).write_text(code)
        elif lang == "bash" and code in guard_and_setup_blocks(blocks):
            outputs[code] = run_bash(code, workdir, env)
    return outputs


def parse_json_lines(text: str) -> list[dict]:
    decoder, out, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)
        while i < len(text) and text[i].isspace():
            i += 1
    return out


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    """The guide run up to a served answer; yields what the tests check."""
    workdir = make_copy(tmp_path_factory.mktemp("readme_guide") / "project")
    env = user_env(workdir)
    store = workdir / ".bentoml" / "models"
    assert not store.exists(), "the guide must start from an empty model store"
    blocks = code_blocks(guide_section())
    outputs = prepare_guide(workdir, env)
    port = str(free_port())
    serve = serve_block(blocks)
    assert f"PORT={README_PORT}" in serve
    server = MakeServe(serve.replace(README_PORT, port), workdir, env, workdir / "serve.log")
    try:
        server.wait_ready(f"http://127.0.0.1:{port}")
        (curl,) = [c for lang, c in blocks if lang == "bash" and "curl" in c]
        assert f":{README_PORT}/" in curl
        answers = parse_json_lines(run_bash(curl.replace(README_PORT, port), workdir, env))
        yield {
            "workdir": workdir, "env": env, "blocks": blocks, "outputs": outputs,
            "answers": answers, "url": f"http://127.0.0.1:{port}", "server": server,
        }
    finally:
        server.stop()


def saved_tag(outputs: dict[str, str]) -> str:
    tags = [m for out in outputs.values() for m in re.findall(r"^saved (\S+):", out, re.MULTILINE)]
    assert len(tags) == 1, outputs
    return tags[0]


def test_the_guide_writes_one_module_and_runs_one_command_each_to_save_and_serve(guide):
    blocks = guide["blocks"]
    modules = module_blocks(blocks)
    assert list(modules) == ["my_app.py"]
    assert "SpamService = guard(APP)" in modules["my_app.py"]
    guard_cmds = [c for c in guard_and_setup_blocks(blocks) if "guard-model" in c]
    assert len(guard_cmds) == 1 and "--model spam_model.pkl" in guard_cmds[0]
    assert re.search(r"^make serve APP=my_app:SpamService PORT=\d+$", serve_block(blocks), re.MULTILINE)


def test_the_saved_model_is_the_only_one_in_the_store_and_guarded(guide):
    tag = saved_tag(guide["outputs"])
    listed = json.loads(run_bash(
        ".venv/bin/bentoml models list -o json", guide["workdir"], guide["env"]
    ))
    assert [m["tag"] for m in listed] == [tag]
    info = run_bash(f".venv/bin/bentoml models get {tag} -o json", guide["workdir"], guide["env"])
    card = json.loads(info)["metadata"]["mlguard"]
    assert card["app"] == "spam" and card["task"] == "binary"
    assert card["classes"] == ["ham", "spam"]
    assert card["features"] == ["from", "links", "exclamations", "caps_ratio", "words"]


def test_the_printed_yardstick_is_the_readmes(guide):
    blocks = guide["blocks"]
    (printed,) = [out for code, out in guide["outputs"].items() if "guard-model" in code]
    guard_index = next(i for i, (lang, c) in enumerate(blocks) if "guard-model" in c)
    lang, shown = blocks[guard_index + 1]
    assert lang == "" and "| scorer |" in shown

    def table(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln.startswith("|") or "held-out rows" in ln]

    assert table(printed) == table(shown)
    assert "the model beats the rules on roc_auc" in printed


def test_the_curl_answers_are_guarded_answers_like_the_readmes(guide):
    blocks = guide["blocks"]
    curl_index = next(i for i, (lang, c) in enumerate(blocks) if lang == "bash" and "curl" in c)
    lang, shown = blocks[curl_index + 1]
    assert lang == "json"
    expected = parse_json_lines(shown)
    answers = guide["answers"]
    tag = saved_tag(guide["outputs"])
    assert len(answers) == len(expected) == 2
    for got, want in zip(answers, expected):
        assert set(got) == {"request_id", "probability", "decision", "route", "reasons", "rules",
                            "model_version"}
        assert re.fullmatch(r"[0-9a-f]{32}", got["request_id"])
        assert got["model_version"] == tag  # the version the guide saved, not the README's
        for key in ("decision", "route", "reasons", "rules"):
            assert got[key] == want[key], (key, got, want)
        assert got["probability"] == pytest.approx(want["probability"], rel=1e-6)
    assert answers[0]["route"] == "model" and answers[0]["decision"] == "quarantine"
    assert answers[1]["route"] == "heuristic"
    assert answers[1]["reasons"] == ["input.unknown_category:from"]


def test_the_alias_is_the_name_clients_send(guide):
    body = {"sender": "company", "links": 1, "exclamations": 0, "caps_ratio": 0.05, "words": 300}
    r = httpx.post(f"{guide['url']}/predict", json=body, timeout=10)
    assert r.status_code == 400
    assert ["from"] in [d["loc"] for d in r.json()["detail"]]
    body["from"] = body.pop("sender")
    r = httpx.post(f"{guide['url']}/predict_batch", json={"mails": [body]}, timeout=10)
    assert r.status_code == 200
    (answer,) = r.json()["predictions"]
    assert answer["route"] == "model" and answer["decision"] == "deliver"


def test_the_transform_snippet_declares_derived_features(guide):
    (snippet,) = [c for lang, c in guide["blocks"] if lang == "python" and "FeatureTransform" in c]
    check = snippet + """
from my_app import APP, Mail, SpamRules
from service.spec import GuardedApp
app = GuardedApp(name="spam", request=Mail, task=APP.task, heuristic=SpamRules(), transform=DERIVED)
row = app.row_of(Mail.model_validate(
    {"from": "unknown", "links": 4, "exclamations": 0, "caps_ratio": 0.1, "words": 200}))
print(json.dumps({"inputs": app.inputs.names, "features": app.features.names,
                  "row": app.features_of(row)}))
"""
    out = run_bash(f".venv/bin/python - <<'EOF'\nimport json\n{check}\nEOF", guide["workdir"],
                   guide["env"])
    got = json.loads(out.strip().splitlines()[-1])
    assert got["inputs"] == ["from", "links", "exclamations", "caps_ratio", "words"]
    assert got["features"] == ["from", "links", "links_per_100_words"]
    assert got["row"] == {"from": "unknown", "links": 4, "links_per_100_words": 2.0}


def guard_command(blocks) -> str:
    (code,) = [c for lang, c in blocks if lang == "bash" and "guard-model" in c]
    return code


def test_a_refused_model_is_answered_by_the_rules_until_it_is_guarded_by_its_tag(guide):
    """The README's claims: a plain `bentoml.sklearn.save_model` model is refused with one line
    naming the fix, the rules answer (`model.unavailable`), and the model guarded by its tag
    (`--model spam:latest`) is picked up without a restart."""
    workdir, env = guide["workdir"], guide["env"]
    run_bash(
        ".venv/bin/python -c \"import bentoml, joblib; "
        "bentoml.sklearn.save_model('spam', joblib.load('spam_model.pkl'))\"", workdir, env,
    )
    port = str(free_port())
    serve = serve_block(guide["blocks"]).replace(README_PORT, port)
    server = MakeServe(serve, workdir, env, workdir / "serve_refused.log")
    url = f"http://127.0.0.1:{port}"
    body = {"from": "unknown", "links": 5, "exclamations": 3, "caps_ratio": 0.35, "words": 90}
    try:
        server.wait_ready(url)
        answer = httpx.post(f"{url}/predict", json=body, timeout=10).json()
        assert answer["route"] == "heuristic" and answer["reasons"] == ["model.unavailable"]
        assert answer["model_version"] == "unavailable"
        assert answer["rules"] == ["many_links", "exclamations", "shouting", "unknown_sender"]
        log = server.log.read_text()
        assert "lacks what the guard needs" in log and "python -m training guard-model" in log
        # The README's sentence: a model in the store is guarded by its tag.
        command = guard_command(guide["blocks"]).replace("spam_model.pkl", "spam:latest")
        out = run_bash(command, workdir, env)
        tag = re.search(r"^saved (\S+):", out, re.MULTILINE)[1]
        deadline = time.monotonic() + 90  # the loader retries with backoff up to 10 s
        while time.monotonic() < deadline:
            answer = httpx.post(f"{url}/predict", json=body, timeout=10).json()
            if answer["model_version"] != "unavailable":
                break
            time.sleep(1)
        assert answer["model_version"] == tag and answer["route"] == "model"
    finally:
        server.stop()


def test_a_model_protocol_object_is_saved_and_guarded_by_its_tag(guide):
    workdir, env = guide["workdir"], guide["env"]
    (snippet,) = [c for lang, c in guide["blocks"] if lang == "python" and "predict_rows" in c]
    run_bash(f".venv/bin/python - <<'EOF'\n{snippet}\nEOF", workdir, env)
    command = guard_command(guide["blocks"]).replace("spam_model.pkl", "spam:latest")
    out = run_bash(command, workdir, env)
    tag = re.search(r"^saved (\S+):", out, re.MULTILINE)[1]
    info = json.loads(run_bash(f".venv/bin/bentoml models get {tag} -o json", workdir, env))
    assert info["module"] == "bentoml.picklable_model"
    assert info["metadata"]["mlguard"]["yardstick"]["rows"] == 1000
