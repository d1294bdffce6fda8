"""A second plug-in, unrelated to credit: will a machine fail before its next service?

Small and synthetic on purpose: it proves the guard is generic (another schema, another model
family, other rules, another batch key) and doubles as the worked example of "Guard your own model".
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from fallbacks.base import HeuristicResult
from monitors.features import Feature, FeatureSchema
from service.spec import GuardedApp

MACHINE_TYPES = ("lathe", "press", "mill")


class SensorReading(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    temperature: Annotated[float, Field(ge=-50, le=400, description="Bearing temperature, °C")]
    vibration: Annotated[float, Field(ge=0, le=100, description="RMS vibration, mm/s")]
    machine_type: str = Field(description="lathe, press or mill")
    hours_since_service: Annotated[float | None, Field(ge=0, le=1e6)] = None


class MaintenanceRules:
    """What a maintenance engineer would say before any model exists."""

    name = "maintenance_rules"

    def score(self, row: Mapping[str, Any]) -> HeuristicResult:
        fired = []
        if row["temperature"] > 80:
            fired.append(("hot_bearing", 1.5))
        if row["vibration"] > 7:
            fired.append(("high_vibration", 1.5))
        hours = row.get("hours_since_service")
        if hours is None or hours > 2000:
            fired.append(("service_overdue", 1.0))
        log_odds = -2.5 + sum(w for _, w in fired)
        return HeuristicResult(1 / (1 + math.exp(-log_odds)), tuple(n for n, _ in fired))


FEATURES = FeatureSchema(
    (
        Feature("temperature", "numeric"),
        Feature("vibration", "numeric"),
        Feature("machine_type", "categorical"),
        Feature("hours_since_service", "numeric", nullable=True),
    )
)

MACHINE_APP = GuardedApp(
    name="machine_failure",
    model_name="machine_failure",
    request_model=SensorReading,
    batch_field="readings",
    features=FEATURES,
    heuristic=MaintenanceRules(),
)


def synthetic_readings(n: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "temperature": rng.normal(65, 10, n).round(1),
            "vibration": rng.gamma(2.0, 2.0, n).round(2),
            "machine_type": rng.choice(MACHINE_TYPES, n),
            "hours_since_service": rng.uniform(0, 3000, n).round(0),
        }
    )
    frame.loc[rng.random(n) < 0.05, "hours_since_service"] = np.nan
    risk = (
        0.08 * (frame.temperature - 65)
        + 0.35 * (frame.vibration - 4)
        + 0.0008 * frame.hours_since_service.fillna(2500)
        + (frame.machine_type == "press") * 0.7
        - 2.0
    )
    frame["failed"] = np.where(rng.random(n) < 1 / (1 + np.exp(-risk)), "yes", "no")
    return frame
