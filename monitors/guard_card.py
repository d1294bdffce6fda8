"""The guard card: everything the guard needs that is saved with a model in the BentoML store.

Written by `training.guard` beside the model (`custom_objects["mlguard"]`, plus a readable summary
in `metadata["mlguard"]` that `bentoml models get` shows), read by every worker and by the drift
process. Plain Python values only, so reading it imports neither pandas nor the framework.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitors.features import FeatureSchema
from monitors.reference import ReferenceStats

CARD_KEY = "mlguard"
FORMAT = 1


@dataclass(frozen=True)
class GuardCard:
    app: str  # the plug-in it was guarded for
    task: str  # binary | multiclass | regression
    classes: tuple[str, ...] | None  # classification: the declared classes, in order
    features: FeatureSchema  # the model's input columns, in order
    reference: ReferenceStats  # per-feature statistics of the training rows (input checks)
    sample: dict[str, list[Any]]  # training rows' features, column -> values (drift reference)
    yardstick: dict[str, Any]  # model vs rules on the holdout (training/yardstick.py)
    target: dict[str, float] = field(default_factory=dict)  # regression: min, max, iqr
    # binary: the holdout's probability calibration, Calibration.to_dict() (monitors/performance/
    # cbpe.py); empty for other tasks and for cards saved before it existed
    calibration: dict[str, Any] = field(default_factory=dict)

    def sample_rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        names = self.features.names
        n = len(self.sample[names[0]]) if names else 0
        n = n if limit is None else min(n, limit)
        return [{c: self.sample[c][i] for c in names} for i in range(n)]

    def summary(self) -> dict[str, Any]:
        """What `metadata["mlguard"]` shows: small, YAML-friendly."""
        return {
            "format": FORMAT,
            "app": self.app,
            "task": self.task,
            # BentoML metadata refuses None: a regression card has no classes key at all.
            **({"classes": list(self.classes)} if self.classes else {}),
            "features": self.features.names,
            "yardstick": self.yardstick,
        }

    def to_custom_object(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "app": self.app,
            "task": self.task,
            "classes": list(self.classes) if self.classes else None,
            "features": self.features.to_dict(),
            "reference": self.reference.to_dict(),
            "sample": self.sample,
            "yardstick": self.yardstick,
            "target": self.target,
            "calibration": self.calibration,
        }

    @classmethod
    def from_custom_object(cls, data: dict[str, Any]) -> GuardCard:
        if data.get("format") != FORMAT:
            raise ValueError(f"guard card format {data.get('format')!r}, this mlguard reads {FORMAT}")
        return cls(
            app=data["app"],
            task=data["task"],
            classes=tuple(data["classes"]) if data["classes"] else None,
            features=FeatureSchema.from_dict(data["features"]),
            reference=ReferenceStats.from_dict(data["reference"]),
            sample=data["sample"],
            yardstick=data["yardstick"],
            target=data.get("target", {}),
            calibration=data.get("calibration", {}),
        )
