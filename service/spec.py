"""The plug-in contract: what a user hands the guarded service."""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from fallbacks.base import Heuristic
from monitors.features import FeatureSchema


@dataclass(frozen=True)
class GuardedApp:
    name: str  # the BentoML service name
    model_name: str  # the model's name in the BentoML model store; its latest version is served
    request_model: type[BaseModel]  # the JSON schema of one row; validation errors become 400
    batch_field: str  # the key holding the rows in a batch request, e.g. "applications"
    features: FeatureSchema  # which request fields the model sees, in its column order
    heuristic: Heuristic  # the rule-based fallback
