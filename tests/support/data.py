"""Rows of the reference data set as the service receives them."""
from __future__ import annotations

from apps.credit.app import CREDIT_APP
from apps.credit.data import load_credit_data, to_rows


def credit_rows() -> list[dict]:
    return to_rows(load_credit_data(), CREDIT_APP.features.names)


GOOD_ROW = {
    "seniority": 9, "home": "rent", "time": 60, "age": 30, "marital": "married",
    "records": "no", "job": "freelance", "expenses": 73, "income": 129.0, "assets": 0.0,
    "debt": 0.0, "amount": 800, "price": 846,
}
