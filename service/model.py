"""The served model behind a narrow interface: a version and a batch `predict_proba`."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from monitors.features import FeatureSchema


class Model(Protocol):
    version: str

    def predict_proba(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Probabilities of the positive class, one per row."""
        ...


class StoreModel:
    """A scikit-learn model from the BentoML model store, fed an object array in schema order."""

    def __init__(self, bento_model: Any, schema: FeatureSchema) -> None:
        import bentoml

        self.version = str(bento_model.tag)
        self.schema = schema
        self._estimator = bentoml.sklearn.load_model(bento_model)

    def predict_proba(self, rows: list[dict[str, Any]]) -> np.ndarray:
        return self._estimator.predict_proba(self.schema.matrix(rows))[:, 1]
