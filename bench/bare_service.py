"""The benchmark's baseline: plain BentoML serving the same model, with nothing of the guard.

`bentoml serve bench.bare_service:BareCreditService` (cwd and PYTHONPATH at the project root).
It parses the same JSON row with the same pydantic schema, builds the model input the same way as
service/model.py and pins OpenMP to one thread like service/factory.py, so the only difference to
the guarded service is the guard itself. Workers and model threads come from the environment so
the benchmark can match the guarded server it is compared with.
"""
import os

import bentoml

from service.credit import CREDIT_FEATURES, LoanApplication

WORKERS = int(os.environ.get("BARE_WORKERS", "1"))
# BentoML runs a sync API in a thread pool of this size; the benchmark sets it to the guarded
# server's model.max_concurrency so both may run the same number of model calls at once.
THREADS = int(os.environ.get("BARE_THREADS", "1"))


@bentoml.service(
    name="bare_credit_risk",
    workers=WORKERS,
    threads=THREADS,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
)
class BareCreditService:
    bento_model = bentoml.models.BentoModel("credit_risk:latest")

    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        self.model = bentoml.sklearn.load_model(self.bento_model)
        threadpool_limits(1)

    @bentoml.api(route="/predict")
    def predict(self, row: LoanApplication, /) -> dict:
        probability = self.model.predict_proba(CREDIT_FEATURES.matrix([vars(row)]))[:, 1]
        return {"probability": float(probability[0])}
