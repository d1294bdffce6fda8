"""The durable prediction store: the prediction log, posted outcomes, and the write-behind buffer.

`open_store(url, app)` gives a `PredictionStore` on SQLite (one instance) or PostgreSQL (several);
`WriteBehindLog` keeps its writes off the request path. Exports to CSV/Parquet live in
`service.store.export` (it imports pandas, which the request path does not need).
"""
from service.store.predictions import PredictionStore, open_store
from service.store.records import (
    FeedbackResult,
    LabelledRow,
    Outcome,
    OutcomeValue,
    PredictionRecord,
)
from service.store.schema import SchemaTooNewError
from service.store.write_behind import Backoff, LogCounts, WriteBehindLog

__all__ = [
    "Backoff",
    "FeedbackResult",
    "LabelledRow",
    "LogCounts",
    "Outcome",
    "OutcomeValue",
    "PredictionRecord",
    "PredictionStore",
    "SchemaTooNewError",
    "WriteBehindLog",
    "open_store",
]
