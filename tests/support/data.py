"""Rows of the reference data set as the service receives them."""
from __future__ import annotations

from functools import cache

import pandas as pd

from apps.credit.app import CREDIT_APP
from apps.credit.data import TARGET, load_credit_data, split_data, to_rows


def credit_rows() -> list[dict]:
    return to_rows(load_credit_data(), CREDIT_APP.features.names)


@cache
def _test_split() -> tuple[list[dict], list[str]]:
    test = split_data(load_credit_data()).test
    return to_rows(test, CREDIT_APP.features.names), test[TARGET].astype(str).tolist()


def held_out_frame() -> pd.DataFrame:
    """The validation and test splits: rows the model never trained on (in distribution)."""
    split = split_data(load_credit_data())
    return pd.concat([split.validation, split.test], ignore_index=True)


def shifted_population(held_out: pd.DataFrame, n: int) -> pd.DataFrame:
    """`n` rows of another population, which drift: part-time applicants, those with records first."""
    shifted = held_out[(held_out.job == "partime") & (held_out.records == "yes")]
    return pd.concat([shifted, held_out[held_out.job == "partime"]]).head(n)


def drift_traffic(shifted_rows: int) -> dict[str, list[dict]]:
    """"normal": every held-out row; "shifted": `shifted_rows` rows of the shifted population."""
    held_out = held_out_frame()
    names = CREDIT_APP.features.names
    return {"normal": to_rows(held_out, names),
            "shifted": to_rows(shifted_population(held_out, shifted_rows), names)}


def held_out_rows(n: int, start: int = 0) -> list[dict]:
    """Rows of the test split, which the model never saw (in distribution: no drift)."""
    return _test_split()[0][start : start + n]


def held_out_outcomes(n: int, start: int = 0) -> list[str]:
    """The true outcomes (good/bad) of the same rows."""
    return _test_split()[1][start : start + n]


GOOD_ROW = {
    "seniority": 9, "home": "rent", "time": 60, "age": 30, "marital": "married",
    "records": "no", "job": "freelance", "expenses": 73, "income": 129.0, "assets": 0.0,
    "debt": 0.0, "amount": 800, "price": 846,
}
