"""The benchmark's baseline: plain BentoML serving the same model, with nothing of the guard.

`bentoml serve bench.bare_service:BareCreditService` (cwd and PYTHONPATH at the project root).
It parses the same JSON row with the same pydantic schema, loads the model with its own framework
loader and builds its input the same way as service/scoring/model.py (the plug-in's feature matrix), and
pins OpenMP to one thread like service/factory.py, so the only difference to the guarded service
is the guard itself. Workers and model threads come from the environment so
the benchmark can match the guarded server it is compared with.
"""
import os

import bentoml

from apps.credit.app import CREDIT_APP, LoanApplication

WORKERS = int(os.environ.get("BARE_WORKERS", "1"))
# BentoML runs a sync API in a thread pool of this size; the benchmark sets it to the guarded
# server's model.max_concurrency so both may run the same number of model calls at once.
THREADS = int(os.environ.get("BARE_THREADS", "1"))
MODEL_TAG = f"{CREDIT_APP.model_name}:latest"


@bentoml.service(
    name="bare_credit_risk",
    workers=WORKERS,
    threads=THREADS,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
)
class BareCreditService:
    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        self.model = bentoml.models.get(MODEL_TAG).load_model()  # the same version as the guard
        # The model's classes are the target's values (['bad', 'good']): answer the probability
        # of the positive class, as the guarded service does.
        self.positive = list(self.model.classes_).index(CREDIT_APP.task.classes[1])
        self.matrix = CREDIT_APP.features.matrix
        self.row_of = CREDIT_APP.row_of
        threadpool_limits(1)

    @bentoml.api(route="/predict")
    def predict(self, row: LoanApplication, /) -> dict:
        probability = self.model.predict_proba(self.matrix([self.row_of(row)]))[:, self.positive]
        return {"probability": float(probability[0])}
