"""The credit-risk plug-in: one module, as a user would write it.

The request schema (its fields are the model's features, declared once), the rules
(apps/credit/rules.py), the task, and the service. Serve it with `make serve` (the default app):
    bentoml serve apps.credit.app:CreditRiskService
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from apps.credit.rules import CreditRules
from monitors.tasks import Binary
from service.factory import guard
from service.spec import GuardedApp

# Generous physical bounds: the schema rejects absurd values outright (400); values that are merely
# outside the training range are the input checks' business (routed to the rules).
Money = Annotated[float, Field(ge=0, le=1e9)]


class LoanApplication(BaseModel):
    """One loan application, as in the credit_data columns (lower case)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    seniority: Annotated[int, Field(ge=0, le=100, description="Years with the current employer")]
    home: str | None = Field(
        description="Home ownership (rent, owner, priv, ignore, parents, other); null when unknown"
    )
    time: Annotated[int, Field(ge=1, le=600, description="Requested loan term in months")]
    age: Annotated[int, Field(ge=0, le=150, description="Age of the applicant in years")]
    marital: str | None = Field(
        description="Marital status (married, single, separated, divorced, widow); null when unknown"
    )
    records: Literal["yes", "no"] = Field(description="Whether the applicant has past records")
    job: str | None = Field(
        description="Type of job (fixed, freelance, partime, others); null when unknown"
    )
    expenses: Annotated[Money, Field(description="Monthly expenses")]
    income: Annotated[Money | None, Field(description="Monthly income; null when undeclared")]
    assets: Annotated[Money | None, Field(description="Value of assets; null when undeclared")]
    debt: Annotated[Money | None, Field(description="Amount of debt; null when undeclared")]
    amount: Annotated[Money, Field(description="Requested loan amount")]
    price: Annotated[Money, Field(description="Price of the purchased good")]


CREDIT_APP = GuardedApp(
    name="credit_risk",
    request=LoanApplication,
    # The target `status`: good or bad; the probability answered is that of default ("bad").
    task=Binary(classes=("good", "bad"), decisions=("approve", "decline"), safe_default="bad"),
    heuristic=CreditRules(),
    batch_field="applications",
)

CreditRiskService = guard(CREDIT_APP)
