"""Builds the BentoML service for a plug-in: the same endpoints and guard for any GuardedApp.

No `from __future__ import annotations` here: BentoML reads the endpoint annotations, which are
the plug-in's own classes, so they must be real objects, not strings.
"""
import logging
import os
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from monitors.reference import ReferenceStats
from service import config
from service.admin import admin_app
from service.api_models import BatchOut, PredictionOut, batch_request_model
from service.body_limit import BodyLimit
from service.drift_http import monitoring_app
from service.drift_service import build_drift_service, drift_client_of
from service.json_only import JsonOnly
from service.model import StoreModel
from service.prediction import Prediction
from service.runtime import GuardedRuntime
from service.spec import GuardedApp

log = logging.getLogger("mlguard.service")


def _answer(p: Prediction) -> PredictionOut:
    return PredictionOut.model_construct(
        request_id=p.request_id,
        probability=p.probability,
        decision=p.decision,
        route=p.route,
        reasons=p.reasons,
        rules=p.rules,
        model_version=p.model_version,
    )


def build_service(app: GuardedApp) -> Any:
    settings = config.load()  # an invalid config stops the service here, naming the key
    Row = app.request_model
    Batch = batch_request_model(Row, app.batch_field)
    workers_runtime: list[GuardedRuntime] = []  # this process's runtime, once built
    DriftService = build_drift_service(app)

    class GuardedService:
        bento_model = bentoml.models.BentoModel(f"{app.model_name}:latest")
        # One drift process for all workers: `bentoml serve` starts it beside them (docs/DRIFT.md).
        drift = bentoml.depends(DriftService)

        def __init__(self) -> None:
            # One OpenMP thread per worker: two threads on two busy cores made p99 ~1 s.
            from threadpoolctl import threadpool_limits

            stored = self.bento_model  # BentoML resolves the reference to the stored model
            model = StoreModel(stored, app.features)
            threadpool_limits(1)
            reference = ReferenceStats.from_dict(stored.custom_objects["reference_stats"])
            self.runtime = GuardedRuntime(
                app, config.config_path(), model, reference,
                drift_client=drift_client_of(self, DriftService.name),
            )
            workers_runtime.append(self.runtime)  # for the mounted admin app of this worker
            self.runtime.start()
            log.info("%s serving %s (worker pid %d)", app.name, model.version, os.getpid())

        @bentoml.api(route="/predict")
        async def predict(self, row: Row, /) -> PredictionOut:
            """Score one row; always answered, by the model, the rules, or the safe default."""
            (p,) = await self.runtime.pipeline.predict([vars(row)])
            return _answer(p)

        @bentoml.api(route="/predict_batch")
        async def predict_batch(self, batch: Batch, /) -> BatchOut:
            """Score rows in order; each row is routed on its own."""
            rows = getattr(batch, app.batch_field)
            limit = self.runtime.settings().server.max_batch_size
            if len(rows) > limit:
                return JSONResponse(
                    {"error": f"{app.batch_field}: {len(rows)} rows, more than the limit of {limit}"},
                    status_code=400,
                )
            predictions = await self.runtime.pipeline.predict([vars(r) for r in rows])
            return BatchOut.model_construct(predictions=[_answer(p) for p in predictions])

        @bentoml.on_shutdown
        def shutdown(self) -> None:
            self.runtime.stop()

    GuardedService.__name__ = GuardedService.__qualname__ = f"{app.name.title().replace('_', '')}Service"
    service = bentoml.service(
        GuardedService,
        name=app.name,
        workers=settings.server.workers,
        traffic={"timeout": 60},
        logging={"access": {"enabled": settings.logging.access_log}},
        # Readiness must not hang on the drift process: serving never depends on it.
        runner_probe={"enabled": False},
    )
    service.mount_asgi_app(
        admin_app(lambda: workers_runtime[-1] if workers_runtime else None), path="/admin", name="admin"
    )
    service.mount_asgi_app(monitoring_app, path="/monitoring", name="monitoring")
    service.add_asgi_middleware(BodyLimit, max_body_bytes=settings.server.max_body_bytes)
    service.add_asgi_middleware(JsonOnly)
    return service
