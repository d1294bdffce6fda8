"""Reference statistics of the training data, saved with the model and read by the input checks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from monitors.features import FeatureSchema

if TYPE_CHECKING:  # pandas is for training only: serving reads the saved dict (~90 MB less)
    import pandas as pd

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True)
class NumericStats:
    min: float
    max: float
    quantiles: dict[str, float]
    missing_rate: float


@dataclass(frozen=True)
class CategoricalStats:
    categories: tuple[str, ...]
    frequencies: dict[str, float]
    missing_rate: float


@dataclass(frozen=True)
class ReferenceStats:
    numeric: dict[str, NumericStats] = field(default_factory=dict)
    categorical: dict[str, CategoricalStats] = field(default_factory=dict)
    rows: int = 0

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, schema: FeatureSchema) -> ReferenceStats:
        numeric = {}
        for name in schema.numeric:
            col = frame[name].astype(float)
            present = col.dropna()
            numeric[name] = NumericStats(
                min=float(present.min()),
                max=float(present.max()),
                quantiles={str(q): float(present.quantile(q)) for q in QUANTILES},
                missing_rate=float(col.isna().mean()),
            )
        categorical = {}
        for name in schema.categorical:
            col = frame[name]
            freq = col.dropna().astype(str).value_counts(normalize=True).sort_index()
            categorical[name] = CategoricalStats(
                categories=tuple(freq.index),
                frequencies={k: float(v) for k, v in freq.items()},
                missing_rate=float(col.isna().mean()),
            )
        return cls(numeric=numeric, categorical=categorical, rows=len(frame))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ReferenceStats:
        return cls(
            numeric={k: NumericStats(**v) for k, v in data["numeric"].items()},
            categorical={
                k: CategoricalStats(**{**v, "categories": tuple(v["categories"])})
                for k, v in data["categorical"].items()
            },
            rows=data["rows"],
        )
