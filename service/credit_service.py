"""The reference credit-risk service: `bentoml serve service.credit_service:CreditRiskService`."""
from service.credit import CREDIT_APP
from service.factory import build_service

CreditRiskService = build_service(CREDIT_APP)
