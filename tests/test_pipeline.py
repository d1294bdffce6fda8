"""The pipeline without a server: routing, failures and the safe default, with a stand-in model."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from apps.credit.app import CREDIT_APP
from service.scoring.model_call import DeadlineModelCall
from service.scoring.pipeline import GuardedPipeline, Recorder, Recorders
from service.scoring.router import RoutingState
from service.worker.config import parse
from tests.support.data import GOOD_ROW, credit_rows
from tests.support.models import loaded_model
from tests.support.wait import wait_until

ROWS = credit_rows()


class BrokenRules:
    name = "broken"

    def score(self, row):
        raise ZeroDivisionError("rules bug")


def make_pipeline(predict, yaml: str = "", heuristic=None, drift=False, model=True):
    settings = parse(yaml)
    served = loaded_model(CREDIT_APP, predict, ROWS) if model else None
    return GuardedPipeline(
        CREDIT_APP,
        model_call=DeadlineModelCall(served.model.predict_rows if served else predict),
        served=lambda: served,
        settings=lambda: settings,
        routing_state=lambda cfg: RoutingState(
            cfg.routing.mode, drift_active=drift, model_available=served is not None
        ),
        heuristic=heuristic,
    )


def run(pipeline, rows):
    return asyncio.run(pipeline.predict(rows))


def constant(p: float):
    return lambda rows: np.full(len(rows), p)


def test_clean_rows_go_to_the_model() -> None:
    (a,) = run(make_pipeline(constant(0.7)), [GOOD_ROW])
    assert (a.route, a.output.score, a.output.decision, a.reasons, a.cause) == (
        "model", 0.7, "decline", [], "none"
    )
    assert a.output.fields == {"probability": 0.7, "decision": "decline"}
    assert a.model_version == "test:1"
    answer = a.answer()
    assert (answer["probability"], answer["decision"], answer["route"]) == (0.7, "decline", "model")


def test_threshold_from_config_decides() -> None:
    (a,) = run(make_pipeline(constant(0.7), "decision:\n  threshold: 0.8\n"), [GOOD_ROW])
    assert a.output.fields["decision"] == "approve"


def test_forced_fallback_never_calls_the_model() -> None:
    def explode(rows):
        raise AssertionError("model called")

    (a,) = run(make_pipeline(explode, "routing:\n  mode: fallback\n"), [GOOD_ROW])
    assert a.route == "heuristic" and a.reasons == ["config.forced"] and a.rules


def test_input_violation_routes_that_row_only() -> None:
    rows = [GOOD_ROW, {**GOOD_ROW, "age": 120}, {**GOOD_ROW, "job": "astronaut"}]
    answers = run(make_pipeline(constant(0.2)), rows)
    assert [a.route for a in answers] == ["model", "heuristic", "heuristic"]
    assert answers[1].reasons == ["input.out_of_range:age"]
    assert answers[2].reasons == ["input.unknown_category:job"]
    assert answers[2].cause == "input.unknown_category"


def test_a_reload_applies_from_the_next_request() -> None:
    """The checks in force are built once per config snapshot and version (not per request): a
    new snapshot's range tolerance and threshold apply from the next request, and a snapshot that
    leaves the tolerance alone keeps the input checker it had."""
    ages = [r["age"] for r in ROWS]
    beyond = {**GOOD_ROW, "age": max(ages) + 0.05 * (max(ages) - min(ages))}  # inside 10 %, outside 0 %
    current = {"cfg": parse("")}
    served = loaded_model(CREDIT_APP, constant(0.7), ROWS)
    pipeline = GuardedPipeline(
        CREDIT_APP,
        model_call=DeadlineModelCall(served.model.predict_rows),
        served=lambda: served,
        settings=lambda: current["cfg"],
        routing_state=lambda cfg: RoutingState(cfg.routing.mode),
    )
    assert run(pipeline, [beyond])[0].route == "model"  # the shipped tolerance, 0.1
    current["cfg"] = parse("input_checks:\n  range_tolerance: 0.0\n")
    (a,) = run(pipeline, [beyond])
    assert (a.route, a.reasons) == ("heuristic", ["input.out_of_range:age"])
    checker = pipeline._judging.checker
    current["cfg"] = parse("input_checks:\n  range_tolerance: 0.0\ndecision:\n  threshold: 0.8\n")
    (a,) = run(pipeline, [GOOD_ROW])
    assert (a.route, a.output.decision) == ("model", "approve")  # 0.7 is under the new threshold
    assert pipeline._judging.checker is checker


def test_every_recorder_hears_each_request_and_each_model_call() -> None:
    """Recorders (the extension point): each model call goes to the recorders that override
    record_model_call, each request to all of them, in order."""
    heard: list[tuple[str, object]] = []

    class Calls(Recorder):
        def record_model_call(self, outcome) -> None:
            heard.append(("call", outcome.raw.shape[0]))

    class Requests(Recorder):
        def record(self, rows, predictions, violations, cfg) -> None:
            heard.append(("request", len(predictions)))

    class MoreCalls(Calls):  # an override inherited from a subclass counts too
        pass

    pipeline = make_pipeline(constant(0.3))
    pipeline.recorder = Recorders(Calls(), Requests(), MoreCalls())
    run(pipeline, [GOOD_ROW, {**GOOD_ROW, "age": 120}, GOOD_ROW])  # the middle row goes to the rules
    assert heard == [("call", 2), ("call", 2), ("request", 3)]


def test_drift_routes_to_the_rules() -> None:
    (a,) = run(make_pipeline(constant(0.2), drift=True), [GOOD_ROW])
    assert a.route == "heuristic" and a.reasons == ["drift.detected"]


def test_model_exception_routes_to_the_rules() -> None:
    def fail(rows):
        raise ValueError("boom")

    (a,) = run(make_pipeline(fail), [GOOD_ROW])
    assert a.route == "heuristic" and a.reasons == ["model.error:ValueError"] and a.cause == "model.error"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, 1.5])
def test_invalid_output_routes_to_the_rules(bad: float) -> None:
    (a,) = run(make_pipeline(constant(bad)), [GOOD_ROW])
    assert a.route == "heuristic" and a.reasons[0].startswith("output.invalid")


def test_wrong_number_of_outputs_is_invalid() -> None:
    answers = run(make_pipeline(lambda rows: np.array([0.1])), [GOOD_ROW, GOOD_ROW])
    assert all(a.reasons == ["output.invalid:1 answers for 2 rows"] for a in answers)
    assert all(a.route == "heuristic" for a in answers)


def test_slow_model_times_out_within_the_deadline() -> None:
    def slow(rows):
        time.sleep(0.5)
        return np.full(len(rows), 0.1)

    pipeline = make_pipeline(slow, "model:\n  timeout_ms: 50\n")
    started = time.perf_counter()
    (a,) = run(pipeline, [GOOD_ROW])
    assert a.reasons == ["model.timeout"] and a.route == "heuristic"
    assert time.perf_counter() - started < 0.4  # answered long before the model finished


def test_saturated_model_overloads_instead_of_queueing() -> None:
    def slow(rows):
        time.sleep(0.3)
        return np.full(len(rows), 0.1)

    pipeline = make_pipeline(slow, "model:\n  timeout_ms: 1000\n  max_concurrency: 1\n")

    async def two_at_once():
        return await asyncio.gather(pipeline.predict([GOOD_ROW]), pipeline.predict([GOOD_ROW]))

    first, second = asyncio.run(two_at_once())
    assert sorted([first[0].reasons, second[0].reasons]) == [[], ["model.overloaded"]]


def test_failing_rules_answer_the_safe_default() -> None:
    (a,) = run(make_pipeline(constant(0.2), "routing:\n  mode: fallback\n", BrokenRules()), [GOOD_ROW])
    # The plug-in's own safe default: the "bad" class, answered as probability 1 of default.
    assert (a.route, a.output.fields["probability"], a.output.fields["decision"]) == (
        "default", 1.0, "decline"
    )
    assert a.reasons == ["config.forced", "heuristic.error:ZeroDivisionError"]
    assert a.cause == "heuristic.error" and a.rules == []


def test_configured_safe_default_answer_replaces_the_plug_ins() -> None:
    yaml = "routing:\n  mode: fallback\nsafe_default:\n  answer: good\n"
    (a,) = run(make_pipeline(constant(0.2), yaml, BrokenRules()), [GOOD_ROW])
    assert (a.route, a.output.fields) == ("default", {"probability": 0.0, "decision": "approve"})


def test_rules_answering_out_of_range_fall_to_the_safe_default() -> None:
    class WildRules:
        name = "wild"

        def score(self, row):
            from fallbacks.base import HeuristicResult

            return HeuristicResult(probability=1.5, rules=("wild",))

    (a,) = run(make_pipeline(constant(0.2), "routing:\n  mode: fallback\n", WildRules()), [GOOD_ROW])
    assert a.route == "default" and a.reasons == ["config.forced", "heuristic.error:InvalidOutput"]


def test_without_a_model_the_rules_answer_every_row() -> None:
    def explode(rows):
        raise AssertionError("model called")

    answers = run(make_pipeline(explode, model=False), [GOOD_ROW, {**GOOD_ROW, "age": 120}])
    assert [a.route for a in answers] == ["heuristic", "heuristic"]
    # No reference statistics without a model: the input checks are off, so no input reason.
    assert [a.reasons for a in answers] == [["model.unavailable"], ["model.unavailable"]]
    assert all(a.model_version == "unavailable" and a.rules for a in answers)


def test_batch_keeps_order_and_one_answer_per_row() -> None:
    rows = credit_rows()[:50]
    answers = run(make_pipeline(lambda rs: np.linspace(0, 1, len(rs))), rows)
    assert len(answers) == 50 and len({a.request_id for a in answers}) == 50
    model_rows = [a.output.fields["probability"] for a in answers if a.route == "model"]
    assert len(model_rows) > 40 and model_rows == sorted(model_rows)


def test_a_call_whose_deadline_passed_before_it_ran_gives_its_slot_back(monkeypatch) -> None:
    """A threaded call still queued for a thread when its deadline passes is cancelled and never
    runs: its concurrency slot must come back all the same, or every later call is overloaded."""
    from service.scoring import model_call

    monkeypatch.setattr(model_call, "MAX_THREADS", 1)  # the queue forms at once
    release = threading.Event()

    def predict(rows):
        assert release.wait(10)
        return np.full(len(rows), 0.2)

    call = DeadlineModelCall(predict)

    async def scenario() -> None:
        busy = asyncio.ensure_future(call([GOOD_ROW], 10.0, 2))  # holds the one thread
        await asyncio.sleep(0.05)
        queued = await call([GOOD_ROW], 0.05, 2)
        assert queued.failure == "model.timeout"
        release.set()
        assert (await busy).failure is None

    asyncio.run(scenario())
    assert wait_until(lambda: call._limit.in_flight == 0, 10)
    call.shutdown()
