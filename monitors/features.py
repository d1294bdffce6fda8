"""The features a plug-in's model sees: names, in column order, and kinds.

Declared once, in the request schema (a pydantic model): `FeatureSchema.from_request` reads each
field's name as clients send it (its alias, when it has one) and its kind from its type: numbers
are numeric; strings, booleans, `Literal`s and enums are categorical. A plug-in whose model sees
derived features declares them in a `FeatureTransform` instead. The input checks, the drift
monitor, the model adapter, training and the metric labels all read this one description.
"""
from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

FeatureKind = Literal["numeric", "categorical"]
KIND_KEY = "feature_kind"  # Field(json_schema_extra={"feature_kind": "categorical"}) overrides


@dataclass(frozen=True)
class Feature:
    name: str
    kind: FeatureKind


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique: {names}")
        for f in self.features:
            if f.kind not in ("numeric", "categorical"):
                raise ValueError(f"feature {f.name!r}: kind must be numeric or categorical")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    def matrix(self, rows: list[Mapping[str, Any]]) -> np.ndarray:
        """The model's input as an object array in schema order, None as NaN."""
        names = self.names
        nan = float("nan")
        return np.array(
            [[nan if (v := row.get(n)) is None else v for n in names] for row in rows],
            dtype=object,
        )

    def to_dict(self) -> dict:
        return {"features": [vars(f) for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSchema:
        return cls(tuple(Feature(f["name"], f["kind"]) for f in data["features"]))

    @classmethod
    def from_request(cls, request: type) -> FeatureSchema:
        """The features of a pydantic request model: one per field, named as clients send it."""
        features = []
        for attr, info in request.model_fields.items():
            name = info.alias or attr
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            kind = extra.get(KIND_KEY) or _kind_of(info.annotation)
            if kind is None:
                raise TypeError(
                    f"{request.__name__}.{attr}: cannot tell whether {info.annotation!r} is numeric "
                    f"or categorical; declare it with Field(json_schema_extra={{'{KIND_KEY}': ...}})"
                )
            features.append(Feature(name, kind))
        return cls(tuple(features))


def _kind_of(annotation: Any) -> FeatureKind | None:
    """numeric for int/float, categorical for str/bool/Literal/Enum; Optional and Annotated unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kind_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind_of(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is Literal:
        return "categorical"
    if annotation is bool or annotation is str:
        return "categorical"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "categorical"
    if annotation in (int, float):
        return "numeric"
    return None


@dataclass(frozen=True)
class FeatureTransform:
    """Derived features: one function from a request row to the model's feature row.

    Declared once in the plug-in and used identically by training (`training.guard`) and serving,
    so the two can never compute a feature differently. `outputs` names and types what `fn`
    returns; the reference statistics, the input checks, drift and the `feature` metric labels
    use these names. `fn` must be total and pure: every schema-valid row gives every output
    (None for a missing value), and nothing else.
    """

    fn: Callable[[Mapping[str, Any]], dict[str, Any]]
    outputs: FeatureSchema

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self.fn(row)
