"""Task kinds without a server: what each accepts from the model and the rules, the safe default,
shadow agreement, and the output policy read from a guard card."""
from __future__ import annotations

import numpy as np
import pytest

from fallbacks.base import HeuristicResult
from monitors.tasks import Binary, InvalidOutput, Multiclass, Output, OutputPolicy, Regression
from service.scoring.model import output_policy
from tests.support.models import guard_card

BINARY = Binary(classes=("ham", "spam"), safe_default="spam", decisions=("deliver", "quarantine"))
PLAIN = Binary(classes=("no", "yes"), safe_default="no")
MULTI = Multiclass(classes=("low", "mid", "high"), safe_default="mid")
REGRESSION = Regression(safe_default=2.5)
POLICY = OutputPolicy()


def _invalid(outputs: list) -> list[bool]:
    return [isinstance(o, InvalidOutput) for o in outputs]


# --- binary -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": ("a", "a"), "safe_default": "a"},
        {"classes": ("a", "b", "c"), "safe_default": "a"},
        {"classes": ("a", "b"), "safe_default": "c"},
        {"classes": ("a", "b"), "safe_default": "a", "decisions": ("x", "x")},
    ],
)
def test_binary_refuses_a_bad_declaration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Binary(**kwargs)


def test_binary_decisions_default_to_the_class_names() -> None:
    assert PLAIN.decision_names == PLAIN.labels == ("no", "yes")
    assert BINARY.decision_names == BINARY.labels == ("deliver", "quarantine")


def test_binary_valid_model_outputs_and_the_threshold() -> None:
    outs = BINARY.from_model(np.array([0.0, 0.3, 0.5, 1.0]), POLICY)
    assert not any(_invalid(outs))
    assert [o.fields for o in outs] == [
        {"probability": 0.0, "decision": "deliver"},
        {"probability": 0.3, "decision": "deliver"},
        {"probability": 0.5, "decision": "quarantine"},  # at the threshold: the positive decision
        {"probability": 1.0, "decision": "quarantine"},
    ]
    assert [o.score for o in outs] == [0.0, 0.3, 0.5, 1.0]
    assert [o.decision for o in outs] == ["deliver", "deliver", "quarantine", "quarantine"]
    (high,) = BINARY.from_model(np.array([0.5]), OutputPolicy(threshold=0.8))
    assert high.decision == "deliver"


def test_binary_two_columns_take_the_positive_class() -> None:
    outs = BINARY.from_model(np.array([[0.9, 0.1], [0.2, 0.8]]), POLICY)
    assert [o.score for o in outs] == [0.1, 0.8]


@pytest.mark.parametrize("task", [BINARY, REGRESSION], ids=["binary", "regression"])
def test_answers_wider_than_one_number_per_row_are_invalid_not_flattened(task) -> None:
    """Flattened, an n x 3 answer would give row 1 row 0's second number: every row is invalid,
    naming the shape, and no row gets a number."""
    outs = task.from_model(np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]), POLICY)
    assert _invalid(outs) == [True, True] and "shape (2, 3)" in str(outs[0])
    assert _invalid(task.from_model(np.zeros((2, 1, 1)), POLICY)) == [True, True]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), -0.01, 1.01])
def test_binary_invalid_model_outputs(bad: float) -> None:
    outs = BINARY.from_model(np.array([0.4, bad]), POLICY)
    assert _invalid(outs) == [False, True]
    assert str(outs[1]) == repr(bad)


def test_binary_rules_results() -> None:
    out = BINARY.from_rules(HeuristicResult(probability=0.7, rules=("r",)), POLICY)
    assert out.fields == {"probability": 0.7, "decision": "quarantine"}
    for bad in (None, float("nan"), 1.5, -0.2):
        with pytest.raises(InvalidOutput, match="rules returned probability"):
            BINARY.from_rules(HeuristicResult(probability=bad), POLICY)


def test_binary_safe_default() -> None:
    assert BINARY.default("spam", POLICY).fields == {"probability": 1.0, "decision": "quarantine"}
    assert BINARY.default("ham", POLICY).fields == {"probability": 0.0, "decision": "deliver"}
    BINARY.check_default("ham")
    with pytest.raises(ValueError, match="one of the classes"):
        BINARY.check_default("deliver")  # a decision word is not a class


def test_binary_agreement_is_the_same_decision() -> None:
    a, b, c = (BINARY.output(p, 0.5) for p in (0.6, 0.9, 0.1))
    assert BINARY.agree(a, b, POLICY) and not BINARY.agree(a, c, POLICY)


def test_binary_score_round_trip_and_target_index() -> None:
    assert BINARY.from_score(0.25, POLICY).fields == {"probability": 0.25, "decision": "deliver"}
    assert BINARY.target_index(np.array(["ham", "spam", "spam"])).tolist() == [0, 1, 1]


# --- multiclass ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": ("a", "b"), "safe_default": "a"},
        {"classes": ("a", "b", "a"), "safe_default": "a"},
        {"classes": ("a", "b", "c"), "safe_default": "z"},
    ],
)
def test_multiclass_refuses_a_bad_declaration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Multiclass(**kwargs)


def test_multiclass_valid_rows_decide_the_most_probable_class() -> None:
    outs = MULTI.from_model(np.array([[0.2, 0.5, 0.3], [0.0, 0.0, 1.0], [0.4, 0.4, 0.2]]), POLICY)
    assert not any(_invalid(outs))
    assert outs[0].fields == {"decision": "mid", "probabilities": {"low": 0.2, "mid": 0.5, "high": 0.3}}
    assert [o.decision for o in outs] == ["mid", "high", "low"]  # a tie: the first declared
    assert [o.score for o in outs] == ["mid", "high", "low"]
    assert MULTI.labels == ("low", "mid", "high")


def test_multiclass_sum_must_be_one_within_1e_6() -> None:
    close = 1e-7
    outs = MULTI.from_model(
        np.array([[0.2, 0.5, 0.3 + close], [0.2, 0.5, 0.31], [0.2, 0.5, 0.3 - 2e-6]]), POLICY
    )
    assert _invalid(outs) == [False, True, True]
    assert str(outs[1]).startswith("sum ")


@pytest.mark.parametrize(
    "row", [[float("nan"), 0.5, 0.5], [-0.1, 0.6, 0.5], [1.2, -0.1, -0.1], [float("inf"), 0.0, 0.0]]
)
def test_multiclass_non_probabilities_are_invalid(row: list[float]) -> None:
    (out,) = MULTI.from_model(np.array([row]), POLICY)
    assert isinstance(out, InvalidOutput)


def test_multiclass_wrong_number_of_columns_or_shape_is_invalid() -> None:
    outs = MULTI.from_model(np.array([[0.5, 0.5], [0.3, 0.7]]), POLICY)
    assert _invalid(outs) == [True, True]
    assert str(outs[0]) == "2 probabilities for 3 classes"
    flat = MULTI.from_model(np.array([0.2, 0.5, 0.3]), POLICY)  # one value per row: no columns
    assert len(flat) == 3 and all(_invalid(flat))


def test_multiclass_rules_results() -> None:
    label_only = MULTI.from_rules(HeuristicResult(label="high", rules=("r",)), POLICY)
    assert label_only.fields == {
        "decision": "high", "probabilities": {"low": 0.0, "mid": 0.0, "high": 1.0}
    }
    probs = {"high": 0.1, "low": 0.6, "mid": 0.3}
    with_probs = MULTI.from_rules(HeuristicResult(label="low", probabilities=probs), POLICY)
    assert with_probs.decision == "low"
    assert list(with_probs.fields["probabilities"]) == ["low", "mid", "high"]  # declared order
    for bad in (
        HeuristicResult(label="extreme"),
        HeuristicResult(label=None),
        HeuristicResult(label="low", probabilities={"low": 0.5, "mid": 0.5}),  # a class missing
        HeuristicResult(label="low", probabilities={**probs, "other": 0.0}),  # an undeclared class
        HeuristicResult(label="low", probabilities={"low": 0.6, "mid": 0.6, "high": 0.1}),  # sum
    ):
        with pytest.raises(InvalidOutput):
            MULTI.from_rules(bad, POLICY)


def test_multiclass_safe_default_and_agreement() -> None:
    default = MULTI.default("mid", POLICY)
    assert default.fields == {"decision": "mid", "probabilities": {"low": 0.0, "mid": 1.0, "high": 0.0}}
    with pytest.raises(ValueError, match="one of the classes"):
        MULTI.check_default("none")
    a = MULTI.output({"low": 0.1, "mid": 0.8, "high": 0.1})
    b = MULTI.default("mid", POLICY)
    c = MULTI.default("low", POLICY)
    assert MULTI.agree(a, b, POLICY) and not MULTI.agree(a, c, POLICY)
    assert MULTI.from_score("high", POLICY).decision == "high"


# --- regression ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "3", None, True])
def test_regression_safe_default_must_be_a_finite_number(bad) -> None:
    with pytest.raises(ValueError, match="finite number"):
        Regression(safe_default=bad)


def test_regression_model_outputs_within_bounds() -> None:
    policy = OutputPolicy(value_bounds=(0.0, 10.0))
    outs = REGRESSION.from_model(
        np.array([0.0, 4.2, 10.0, -0.5, 10.5, float("nan"), float("inf")]), policy
    )
    assert _invalid(outs) == [False, False, False, True, True, True, True]
    assert outs[1].fields == {"value": 4.2} and outs[1].score == 4.2 and outs[1].decision is None
    assert "outside [0, 10]" in str(outs[3])
    unbounded = REGRESSION.from_model(np.array([[1e9], [-1e9]]), POLICY)  # n x 1 is n values
    assert [o.score for o in unbounded] == [1e9, -1e9]


def test_regression_rules_default_and_agreement() -> None:
    assert REGRESSION.from_rules(HeuristicResult(value=3), POLICY).fields == {"value": 3.0}
    for bad in (None, float("nan"), float("-inf")):
        with pytest.raises(InvalidOutput, match="rules returned value"):
            REGRESSION.from_rules(HeuristicResult(value=bad), POLICY)
    assert REGRESSION.default(2.5, POLICY).fields == {"value": 2.5}
    assert REGRESSION.labels == ()
    policy = OutputPolicy(agreement_tolerance=1.0)
    model, near, far = (REGRESSION.output(v) for v in (5.0, 6.0, 6.5))
    assert REGRESSION.agree(model, near, policy) and not REGRESSION.agree(model, far, policy)
    assert REGRESSION.from_score(1.5, POLICY) == Output({"value": 1.5}, None, 1.5)


# --- the policy from a guard card ---------------------------------------------------------------


def test_output_policy_widens_the_target_range_and_scales_agreement_by_the_iqr() -> None:
    from pydantic import BaseModel

    from service.spec import GuardedApp

    class Row(BaseModel):
        x: float

    class Rules:
        name = "constant"

        def score(self, row):
            return HeuristicResult(value=1.0)

    app = GuardedApp("values", Row, REGRESSION, Rules())
    card = guard_card(app, [{"x": 0.0}, {"x": 1.0}], target={"min": 10.0, "max": 20.0, "iqr": 4.0})
    policy = output_policy(card, threshold=0.6, range_tolerance=0.1, agreement=0.5)
    assert policy.threshold == 0.6
    assert policy.value_bounds == pytest.approx((9.0, 21.0))
    assert policy.agreement_tolerance == pytest.approx(2.0)
    no_card = output_policy(None, 0.5, 0.1, 0.5)
    assert no_card.value_bounds is None and no_card.agreement_tolerance == 0.0
