"""The feature schema a plug-in declares: which fields the model sees, in which order, of which kind.

It is the one description of the inputs that the checks, the drift monitor, the model adapter and
training all read, so none of them hard-codes a column list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Feature:
    name: str
    kind: FeatureKind
    nullable: bool = False


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[Feature, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    def matrix(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """The model's input: an object array in schema order, None as NaN."""
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
        return cls(tuple(Feature(**f) for f in data["features"]))
