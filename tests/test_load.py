"""A bounded loopback load test under fault drills: nothing is lost, everything is counted.

Two workers, 30% model errors and 10% slow model calls (past the deadline), 32 concurrent
clients, 3,000 predictions (single rows and batches of 10): zero 5xx, every answer valid, and the
service's own count of predictions equals the number sent.
"""
from __future__ import annotations

from collections import Counter

import pytest
import yaml

from monitors import reasons
from tests.support.answers import CreditAnswer, CreditBatchAnswer
from tests.support.load import credit_calls, run_load
from tests.support.metrics import scrape, total
from tests.support.server import ROOT, ServerProcess

SINGLES, BATCHES, BATCH_SIZE = 2000, 100, 10


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory):
    config = yaml.safe_load((ROOT / "config" / "mlguard.yaml").read_text())
    config["faults"].update(
        model_error_ratio=0.3, model_delay_ratio=0.1, model_delay_ms=config["model"]["timeout_ms"] + 200
    )
    config["logging"]["prediction_sample_ratio"] = 0.01  # 3,000 log lines would only slow the drill
    # The breaker would open on these failures and take the model out for the rest of the run, so
    # the drills would stop biting; it is tested on its own (tests/test_circuit_http.py).
    config["circuit"]["enabled"] = False
    proc = ServerProcess(
        workdir=tmp_path_factory.mktemp("load"), workers=2, config_text=yaml.safe_dump(config)
    ).start()
    yield proc
    proc.stop()


def test_under_faults_every_prediction_is_answered_valid_and_counted(faulty_server) -> None:
    calls = credit_calls(SINGLES, BATCHES, BATCH_SIZE)
    sent = sum(c.rows for c in calls)
    assert sent == 3000

    report = run_load(faulty_server.url, calls, concurrency=32)

    statuses = Counter(r.status for r in report.results)
    assert statuses == {200: len(calls)}, (statuses, [r.error for r in report.results if r.error][:3])
    answers = []
    for r in report.results:
        if r.call.path == "/predict":
            answers.append(CreditAnswer.model_validate(r.body))
        else:
            batch = CreditBatchAnswer.model_validate(r.body)
            assert len(batch.predictions) == BATCH_SIZE
            answers.extend(batch.predictions)
    assert len(answers) == sent
    assert len({a.request_id for a in answers}) == sent

    causes = Counter(reasons.code_of(a.reasons[0]) if a.reasons else "none" for a in answers)
    assert set(causes) <= {"none", *reasons.ALL}
    # The drills really bit, and the model still answered most of the rest.
    assert causes[reasons.MODEL_ERROR] > 0 and causes[reasons.MODEL_TIMEOUT] > 0
    assert causes["none"] > 0
    for a in answers:
        assert (a.route == "model") == (a.reasons == [])

    samples = scrape(faulty_server.url)
    assert total(samples, "mlguard_requests_total") == sent
    assert total(samples, "mlguard_requests_total", route="model") == causes["none"]
    assert total(samples, "mlguard_faults_active") >= 1
