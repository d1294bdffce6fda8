"""The answer schemas, shared by every plug-in: one prediction, and a batch of them."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model


class PredictionOut(BaseModel):
    request_id: str = Field(description="Unique id of this prediction; it is in the log line too")
    probability: float = Field(ge=0.0, le=1.0, description="Probability of the positive class")
    decision: Literal["approve", "decline"] = Field(description="decline when probability >= threshold")
    route: Literal["model", "heuristic", "default"] = Field(description="Which path answered")
    reasons: list[str] = Field(description="Reason codes (code[:detail]); empty on the clean model path")
    rules: list[str] = Field(description="The heuristic's rules that fired, when it answered")
    model_version: str = Field(description="The BentoML model tag served")


class BatchOut(BaseModel):
    predictions: list[PredictionOut]


def batch_request_model(row_model: type[BaseModel], field_name: str) -> type[BaseModel]:
    """`{"<field_name>": [row, ...]}`; the size limit is checked in the handler, as it can reload."""
    return create_model(
        f"{row_model.__name__}Batch",
        __config__=ConfigDict(extra="forbid"),
        **{field_name: (list[row_model], Field(min_length=1, description="Rows, answered in order"))},
    )
