"""Reference statistics of the training rows: what the input checks compare each row against."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from monitors.features import FeatureSchema

if TYPE_CHECKING:  # pandas is for training only: serving reads the saved dict
    import pandas as pd


@dataclass(frozen=True)
class NumericStats:
    min: float
    max: float


@dataclass(frozen=True)
class CategoricalStats:
    categories: tuple[str, ...]


@dataclass(frozen=True)
class ReferenceStats:
    numeric: dict[str, NumericStats] = field(default_factory=dict)
    categorical: dict[str, CategoricalStats] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, schema: FeatureSchema) -> ReferenceStats:
        numeric = {}
        for name in schema.numeric:
            present = frame[name].astype(float).dropna()
            if present.empty:
                raise ValueError(f"feature {name!r} has no value in the training rows")
            numeric[name] = NumericStats(min=float(present.min()), max=float(present.max()))
        categorical = {
            name: CategoricalStats(tuple(sorted(frame[name].dropna().astype(str).unique())))
            for name in schema.categorical
        }
        return cls(numeric=numeric, categorical=categorical)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ReferenceStats:
        return cls(
            numeric={k: NumericStats(v["min"], v["max"]) for k, v in data["numeric"].items()},
            categorical={
                k: CategoricalStats(tuple(v["categories"])) for k, v in data["categorical"].items()
            },
        )
