"""A binary plug-in on scikit-learn's breast cancer data, served with a LightGBM model.

One module, as a user would write it: the request schema (six of the data set's measurements),
hand-written rules, the task, and the service. The model is trained and guarded by
tests/apps/train_tumour.py and saved with `bentoml.lightgbm`, so it is served by LightGBM's own
loader (a Booster), not scikit-learn's.

One field has an alias: clients send `worstConcavePoints` (the JSON API's camelCase), Python
reads `worst_concave_points`. The alias is the name everywhere downstream: 400 messages, input
check reasons, metric labels, the model's column.

    bentoml serve tests.apps.tumour:TumourService
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from fallbacks.base import HeuristicResult
from monitors.tasks import Binary
from service.factory import guard
from service.spec import GuardedApp

# Physical bounds: absurd values are a 400; values merely outside the training range go to the
# rules (input.out_of_range).
Length = Annotated[float, Field(ge=0, le=100)]  # micrometres, as in the data set
Share = Annotated[float, Field(ge=0, le=1)]


class TumourMeasurements(BaseModel):
    """Cell-nucleus measurements of one fine-needle aspirate (mean and worst over the nuclei)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    radius: Annotated[Length, Field(description="Mean radius of the nuclei")]
    texture: Annotated[Length, Field(description="Mean texture (grey-scale standard deviation)")]
    smoothness: Annotated[Share, Field(description="Mean smoothness (local radius variation)")]
    concave_points: Annotated[Share, Field(description="Mean share of concave contour points")]
    worst_area: Annotated[float, Field(ge=0, le=1e5, description="Largest mean nucleus area")]
    worst_concave_points: Annotated[
        Share, Field(alias="worstConcavePoints", description="Largest share of concave points")
    ]


# Base log-odds: a sample firing no rule scores 38%, the data's share of malignant samples.
BASE_LOG_ODDS = -0.5


class TumourRules:
    """A scorecard read off the data by hand: each rule adds log-odds of malignancy."""

    name = "tumour_rules"

    def score(self, row: Mapping[str, Any]) -> HeuristicResult:
        fired: list[tuple[str, float]] = []

        def rule(name: str, condition: bool, weight: float) -> None:
            if condition:
                fired.append((name, weight))

        # Medians: benign 12.2, malignant 17.3.
        radius = row["radius"]
        rule("large_radius", radius > 15, 1.5)
        rule("small_radius", radius < 12, -1.5)
        # Medians: benign 0.023, malignant 0.086.
        rule("many_concave_points", row["concave_points"] > 0.05, 1.5)
        rule("few_concave_points", row["concave_points"] < 0.03, -1.0)
        # Medians: benign 0.074, malignant 0.18.
        worst = row["worstConcavePoints"]
        rule("worst_many_concave_points", worst > 0.15, 1.5)
        rule("worst_few_concave_points", worst < 0.1, -1.0)
        # Medians: benign 547, malignant 1303.
        rule("large_worst_area", row["worst_area"] > 900, 1.0)
        # Medians: benign 17.4, malignant 21.5.
        rule("coarse_texture", row["texture"] > 21, 0.7)
        # Medians: benign 0.091, malignant 0.102.
        rule("irregular_contour", row["smoothness"] > 0.11, 0.5)

        log_odds = BASE_LOG_ODDS + sum(w for _, w in fired)
        return HeuristicResult(
            probability=1.0 / (1.0 + math.exp(-log_odds)), rules=tuple(n for n, _ in fired)
        )


APP = GuardedApp(
    name="tumour",
    request=TumourMeasurements,
    # The probability answered is that of "malignant"; when in doubt, refer the patient.
    task=Binary(classes=("benign", "malignant"), decisions=("discharge", "refer"),
                safe_default="malignant"),
    heuristic=TumourRules(),
    batch_field="samples",
)

TumourService = guard(APP)
