"""The plug-in contract: what a user writes to put a model behind the guard.

A plug-in is one module with three things: the request schema (a pydantic model), the rules (a
`Heuristic`), and a `GuardedApp` that ties them to a task and a model name. The service is then
one line, `MyService = guard(APP)` (service/factory.py), and the model is saved with what the
guard needs by `training.guard.guard_model` (or its CLI, `python -m training guard-model`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from fallbacks.base import Heuristic
from monitors.features import FeatureSchema, FeatureTransform
from monitors.performance.realized import METRICS
from monitors.tasks import Task


@dataclass(frozen=True)
class GuardedApp:
    """One guarded application.

    name:        the service's name: in BentoML, in metrics' `service_name`, and in the state
                 directory (`admin.state_dir/<name>/`), so two plug-ins never share admin state.
    request:     the pydantic model of one row. Its fields are the inputs, declared once: names as
                 clients send them (aliases respected), kinds from the types (numbers are numeric;
                 str, bool, Literal and Enum are categorical), `None` allowed where optional.
                 Validation errors become a 400 naming the field.
    task:        `Binary(...)`, `Multiclass(...)` or `Regression(...)` (monitors/tasks.py).
    heuristic:   the rules (fallbacks/base.py): answer every row when the model may not.
    model_name:  the model's name in the BentoML store; `model_name:latest` is served.
    batch_field: the key holding the rows of a `/predict_batch` request, e.g. "applications".
    transform:   optional derived features (monitors/features.py); without it the model sees the
                 request's fields, in declaration order.
    """

    name: str
    request: type[BaseModel]
    task: Task
    heuristic: Heuristic
    model_name: str = ""  # default: the app's name
    batch_field: str = "rows"
    transform: FeatureTransform | None = None
    inputs: FeatureSchema = field(init=False)
    features: FeatureSchema = field(init=False)

    def __post_init__(self) -> None:
        if not self.model_name:
            object.__setattr__(self, "model_name", self.name)
        inputs = FeatureSchema.from_request(self.request)
        object.__setattr__(self, "inputs", inputs)
        features = self.transform.outputs if self.transform is not None else inputs
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "_aliases", _aliases(self.request))

    def check_settings(self, settings: Any) -> None:
        """What only the plug-in can check in a config snapshot; raises ValueError."""
        answer = settings.safe_default.answer
        if answer is not None:
            try:
                self.task.check_default(answer)
            except ValueError as exc:
                raise ValueError(f"safe_default.answer: {exc}") from None
        metric = settings.performance.metric
        known = METRICS[self.task.kind]
        if metric and metric not in known:
            raise ValueError(
                f"performance.metric: {metric!r} is not one of {list(known)} ({self.task.kind} plug-ins)"
            )
        unknown = sorted(set(settings.store.redact) - set(self.inputs.names))
        if unknown:
            raise ValueError(f"store.redact: {unknown} are not fields of {self.request.__name__}")

    def row_of(self, obj: BaseModel) -> dict[str, Any]:
        """A validated request object as the row clients sent: keyed by alias, None when missing."""
        aliases = self._aliases  # type: ignore[attr-defined]
        if not aliases:
            return vars(obj)  # read-only downstream: nothing mutates a row
        values = vars(obj)
        return {aliases.get(k, k): v for k, v in values.items()}

    def features_of(self, row: dict[str, Any]) -> dict[str, Any]:
        """The model's feature row for a request row."""
        return row if self.transform is None else self.transform(row)


def _aliases(request: type[BaseModel]) -> dict[str, str]:
    return {attr: info.alias for attr, info in request.model_fields.items() if info.alias}
