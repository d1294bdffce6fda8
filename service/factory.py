"""Builds the BentoML service for a plug-in: the same endpoints and guard for any GuardedApp.

No `from __future__ import annotations` here: BentoML reads the endpoint annotations, which are
the plug-in's own classes, so they must be real objects, not strings.
"""
import logging
import os
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from service.api.admin import admin_app
from service.api.api_models import answer_model, batch_answer_model, batch_request_model
from service.api.body_limit import BodyLimit
from service.api.client_identity import ClientIdentity
from service.api.json_only import JsonOnly
from service.api.monitoring import monitoring_app
from service.api.records import records_app
from service.api.responses import json_response
from service.spec import GuardedApp
from service.worker import config, interpreter
from service.worker.drift_service import build_drift_service, drift_client_of
from service.worker.logs import quiet_client_errors
from service.worker.runtime import GuardedRuntime

log = logging.getLogger("mlguard.service")


def guard(app: GuardedApp) -> Any:
    """The BentoML service of a plug-in: `MyService = guard(APP)`, then `bentoml serve module:MyService`.

    The same endpoints and guard for every plug-in: POST /predict and /predict_batch (the answer
    shaped by the task), POST /feedback, /predictions/{id}, /admin, /monitoring, /metrics, and one
    monitoring (drift) process beside the workers.
    """
    quiet_client_errors()
    settings = config.load(config.config_path(app.name))  # an invalid config stops here, naming the key
    app.check_settings(settings)
    Row = app.request
    Batch = batch_request_model(Row, app.batch_field)
    service_name = app.name.title().replace("_", "")
    Answer = answer_model(app.task, service_name)
    BatchAnswer = batch_answer_model(Answer, service_name)
    workers_runtime: list[GuardedRuntime] = []  # this process's runtime, once built
    DriftService = build_drift_service(app)
    row_of = app.row_of

    class GuardedService:
        # One drift process for all workers: `bentoml serve` starts it beside them (docs/DRIFT.md).
        drift = bentoml.depends(DriftService)

        def __init__(self) -> None:
            # One OpenMP thread per worker: two threads on two busy cores made p99 ~1 s.
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
            self.runtime = GuardedRuntime(app, drift_client=drift_client_of(self, DriftService.name))
            workers_runtime.append(self.runtime)  # for the mounted admin app of this worker
            self.runtime.start()
            interpreter.settle()  # start-up is done: collector and GIL set for serving
            log.info("%s worker up (pid %d), model %s", app.name, os.getpid(),
                     self.runtime.admin_view()["model"]["version"])

        def __is_ready__(self) -> bool:
            return self.runtime.ready()

        @bentoml.api(route="/predict")
        async def predict(self, row: Row, /) -> Answer:
            """Answer one row; always answered, by the model, the rules, or the safe default."""
            (p,) = await self.runtime.pipeline.predict([row_of(row)])
            return json_response(p.answer())  # in the declared schema, `Answer`

        @bentoml.api(route="/predict_batch")
        async def predict_batch(self, batch: Batch, /) -> BatchAnswer:
            """Answer rows in order; each row is routed on its own."""
            rows = getattr(batch, app.batch_field)
            limit = self.runtime.settings().server.max_batch_size
            if len(rows) > limit:
                return JSONResponse(
                    {"error": f"{app.batch_field}: {len(rows)} rows, more than the limit of {limit}"},
                    status_code=400,
                )
            predictions = await self.runtime.pipeline.predict([row_of(r) for r in rows])
            return json_response({"predictions": [p.answer() for p in predictions]})

        @bentoml.on_shutdown
        async def shutdown(self) -> None:
            await self.runtime.stop()

    GuardedService.__name__ = GuardedService.__qualname__ = f"{service_name}Service"
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
    service.mount_asgi_app(monitoring_app(), path="/monitoring", name="monitoring")
    # At the root: BentoML's PassiveMount answers only this app's own paths (/feedback,
    # /predictions/{id}), so it shadows none of the service's routes.
    service.mount_asgi_app(
        records_app(lambda: workers_runtime[-1] if workers_runtime else None), path="/", name="records"
    )
    service.add_asgi_middleware(BodyLimit, max_body_bytes=settings.server.max_body_bytes)
    service.add_asgi_middleware(JsonOnly)
    service.add_asgi_middleware(ClientIdentity)  # who sent the rows, for the drift window's cap
    return service
