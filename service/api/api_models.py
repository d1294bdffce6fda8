"""The answer schemas: one prediction and a batch of them, shaped by the plug-in's task.

Every answer carries `request_id`, `route`, `reasons`, `rules` and `model_version`; the task adds
its own fields: `probability` and `decision` (binary), `decision` and `probabilities`
(multiclass), `value` (regression).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from monitors.tasks import Task


class AnswerBase(BaseModel):
    request_id: str = Field(description="Unique id of this prediction; it is in the log line too")
    route: Literal["model", "heuristic", "default"] = Field(description="Which path answered")
    reasons: list[str] = Field(description="Reason codes (code[:detail]); empty on the clean model path")
    rules: list[str] = Field(description="The heuristic's rules that fired, when it answered")
    model_version: str = Field(
        description='The BentoML model tag that answered or was in force; "unavailable" without one'
    )


def _task_fields(task: Task) -> dict[str, Any]:
    if task.kind == "binary":
        negative, positive = task.decision_names
        return {
            "probability": (float, Field(ge=0.0, le=1.0, description=f"Probability of {task.classes[1]!r}")),
            "decision": (
                Literal[negative, positive],  # type: ignore[valid-type]
                Field(description=f"{positive!r} when probability >= decision.threshold"),
            ),
        }
    if task.kind == "multiclass":
        return {
            "decision": (Literal[task.classes], Field(description="The most probable class")),  # type: ignore[valid-type]
            "probabilities": (dict[str, float], Field(description="Probability of each class")),
        }
    return {"value": (float, Field(description="The predicted value"))}


def answer_model(task: Task, name: str) -> type[BaseModel]:
    """The answer of one row, fields in the order the JSON shows them."""
    fields = {"request_id": (str, AnswerBase.model_fields["request_id"])}
    fields.update(_task_fields(task))
    fields.update({k: (v.annotation, v) for k, v in AnswerBase.model_fields.items() if k != "request_id"})
    return create_model(f"{name}Answer", **fields)


def batch_answer_model(answer: type[BaseModel], name: str) -> type[BaseModel]:
    return create_model(f"{name}BatchAnswer", predictions=(list[answer], ...))


def batch_request_model(row_model: type[BaseModel], field_name: str) -> type[BaseModel]:
    """`{"<field_name>": [row, ...]}`; the size limit is checked in the handler, as it can reload."""
    return create_model(
        f"{row_model.__name__}Batch",
        __config__=ConfigDict(extra="forbid"),
        **{field_name: (list[row_model], Field(min_length=1, description="Rows, answered in order"))},
    )
