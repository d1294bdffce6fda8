"""The credit rules: deterministic, explainable, total, and weaker than the model."""
from __future__ import annotations

import math

import bentoml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.credit.app import LoanApplication
from apps.credit.rules import CreditRules
from tests.support.data import GOOD_ROW

RULES = CreditRules()


def _money(nullable: bool):
    base = st.floats(min_value=0, max_value=1e9, allow_nan=False)
    return st.one_of(st.none(), base) if nullable else base


def _category():
    return st.one_of(st.none(), st.sampled_from(["rent", "owner", "partime", "fixed", "yes"]), st.text(max_size=12))


APPLICATIONS = st.builds(
    dict,
    seniority=st.integers(0, 100),
    home=_category(),
    time=st.integers(1, 600),
    age=st.integers(0, 150),
    marital=_category(),
    records=st.sampled_from(["yes", "no"]),
    job=_category(),
    expenses=_money(False),
    income=_money(True),
    assets=_money(True),
    debt=_money(True),
    amount=_money(False),
    price=_money(False),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(APPLICATIONS)
def test_rules_are_total_over_every_schema_valid_application(row: dict) -> None:
    LoanApplication.model_validate(row)  # the generator stays inside the schema
    result = RULES.score(row)
    assert math.isfinite(result.probability) and 0.0 <= result.probability <= 1.0
    assert all(isinstance(r, str) for r in result.rules)
    assert RULES.score(row) == result  # deterministic


def test_rules_explain_a_risky_application() -> None:
    risky = {**GOOD_ROW, "records": "yes", "job": "partime", "seniority": 0, "income": None}
    result = RULES.score(risky)
    assert {"has_records", "part_time_job", "new_in_job", "income_undeclared"} <= set(result.rules)
    assert result.probability > RULES.score(GOOD_ROW).probability
    assert result.probability >= 0.5


def test_model_beats_the_rules_on_the_test_split() -> None:
    """The yardstick saved with the model (its guard card's summary) on the held-out split."""
    yardstick = bentoml.models.get("credit_risk:latest").info.metadata["mlguard"]["yardstick"]
    assert yardstick["metric"] == "roc_auc" and yardstick["rows"] > 0
    assert yardstick["model"]["roc_auc"] > yardstick["heuristic"]["roc_auc"] > 0.7
    assert yardstick["model_beats_rules"] is True
    assert 0.0 < yardstick["agreement"] <= 1.0
