"""Stand-in models for pipeline tests: a `LoadedModel` without the store or a framework."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from monitors.guard_card import GuardCard
from monitors.reference import ReferenceStats
from service.scoring.model import LoadedModel
from service.spec import GuardedApp


class StandInModel:
    """The `Model` protocol around a plain function of the feature rows."""

    def __init__(self, predict: Callable[[list[dict[str, Any]]], np.ndarray]) -> None:
        self._predict = predict

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        return self._predict(rows)


def guard_card(app: GuardedApp, rows: list[dict[str, Any]], target: dict | None = None) -> GuardCard:
    """A guard card whose reference statistics and sample are `rows` (feature rows)."""
    names = app.features.names
    return GuardCard(
        app=app.name,
        task=app.task.kind,
        classes=tuple(getattr(app.task, "classes", ())) or None,
        features=app.features,
        reference=ReferenceStats.from_frame(pd.DataFrame(rows, columns=names), app.features),
        sample={n: [r.get(n) for r in rows] for n in names},
        yardstick={},
        target=target or {},
    )


def loaded_model(
    app: GuardedApp,
    predict: Callable[[list[dict[str, Any]]], np.ndarray],
    rows: list[dict[str, Any]],
    version: str = "test:1",
    card: GuardCard | None = None,
) -> LoadedModel:
    """A served version: `predict` behind the model protocol, `rows` as its training reference."""
    return LoadedModel(version, StandInModel(predict), card or guard_card(app, rows), 0.0)
