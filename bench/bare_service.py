"""The benchmark's baselines: plain BentoML serving the same model, with nothing of the guard.

`bentoml serve bench.bare_service:BareCreditService` (cwd and PYTHONPATH at the project root).
It parses the same JSON row with the same pydantic schema, loads the model with its own framework
loader and builds its input the same way as service/scoring/model.py (the plug-in's feature matrix), and
pins OpenMP to one thread like service/factory.py, so the only difference to the guarded service
is the guard itself. Workers come from the environment so the benchmark can match the guarded
server it is compared with.

Each is the fastest plain BentoML service of this model we found, so that what the guard costs
shows (docs/BENCHMARKS.md, "The baseline"): async, calling the model inline on the event loop (it
scores a row in ~15 us; a sync API's thread pool hand-off costs more than that), and a declared
JSON answer (an undeclared `dict` or list answer makes BentoML build its JSON schema again for
every response, ~18% of bare's CPU in a profile).

`BareAdaptiveService` is the peer a BentoML user would pick for concurrent one-row traffic:
BentoML's own adaptive batching (`batchable=True`), the client sending a one-row list, the same
model and input. It is measured beside mlguard's micro-batching.
"""
import os
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel

from apps.credit.app import CREDIT_APP, LoanApplication

WORKERS = int(os.environ.get("BARE_WORKERS", "1"))
MODEL_TAG = f"{CREDIT_APP.model_name}:latest"
# As many rows as mlguard's model.micro_batch_max_rows; BentoML's default latency cap.
ADAPTIVE_MAX_BATCH = 64


class _Scorer:
    """The stored model and the plug-in's input, as the guard's model path builds it."""

    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        self.model = bentoml.models.get(MODEL_TAG).load_model()  # the same version as the guard
        # The model's classes are the target's values (['bad', 'good']): answer the probability
        # of the positive class, as the guarded service does.
        self.positive = list(self.model.classes_).index(CREDIT_APP.task.classes[1])
        self.matrix = CREDIT_APP.features.matrix
        self.row_of = CREDIT_APP.row_of
        threadpool_limits(1)

    def probabilities(self, rows: list[Any]) -> list[float]:
        x = self.matrix([self.row_of(r) for r in rows])
        return self.model.predict_proba(x)[:, self.positive].tolist()


class BareAnswer(BaseModel):
    probability: float


_SERVICE = {"workers": WORKERS, "traffic": {"timeout": 60}, "logging": {"access": {"enabled": False}}}


@bentoml.service(name="bare_credit_risk", **_SERVICE)
class BareCreditService:
    def __init__(self) -> None:
        self.scorer = _Scorer()

    @bentoml.api(route="/predict")
    async def predict(self, row: LoanApplication, /) -> BareAnswer:
        return BareAnswer(probability=self.scorer.probabilities([row])[0])


@bentoml.service(name="bare_credit_risk_adaptive", **_SERVICE)
class BareAdaptiveService:
    def __init__(self) -> None:
        self.scorer = _Scorer()

    @bentoml.api(route="/predict", batchable=True, max_batch_size=ADAPTIVE_MAX_BATCH)
    async def predict(
        self, rows: list[LoanApplication], /
    ) -> Annotated[list[BareAnswer], ContentType("application/json")]:
        """A list of rows in, one answer per row out; BentoML merges concurrent requests' lists."""
        return [BareAnswer(probability=p) for p in self.scorer.probabilities(rows)]
