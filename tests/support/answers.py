"""The credit service's answer schemas, built as the service builds them, to validate bodies."""
from __future__ import annotations

from apps.credit.app import CREDIT_APP
from service.api.api_models import answer_model, batch_answer_model

CreditAnswer = answer_model(CREDIT_APP.task, "CreditRiskTest")
CreditBatchAnswer = batch_answer_model(CreditAnswer, "CreditRiskTest")
