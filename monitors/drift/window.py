"""The rolling window: the last `window_size` served rows, shared by every worker's traffic.

A deque with maxlen: appending past the bound drops the oldest rows, so memory is fixed whatever
the traffic. A lock because the ingest endpoint and the checker thread touch it concurrently.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where frames are built, in the drift process, not by API workers
    import pandas as pd


@dataclass(frozen=True)
class WindowRow:
    features: dict[str, Any]
    prediction: float | str | None  # the model's (probability, class or value) when it answered
    agreed: bool | None  # model and rules took the same decision (model-routed rows only)


class DriftWindow:
    def __init__(self, size: int) -> None:
        self._rows: deque[WindowRow] = deque(maxlen=size)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._rows.maxlen or 0

    def __len__(self) -> int:
        return len(self._rows)

    def extend(self, rows: Iterable[WindowRow]) -> None:
        with self._lock:
            self._rows.extend(rows)

    def resize(self, size: int) -> None:
        """Keep the newest rows that fit the new bound."""
        with self._lock:
            if size != self._rows.maxlen:
                self._rows = deque(self._rows, maxlen=size)

    def snapshot(self) -> list[WindowRow]:
        with self._lock:
            return list(self._rows)


def features_frame(rows: list[WindowRow], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([r.features for r in rows], columns=columns)


def predictions(rows: list[WindowRow]) -> pd.Series:
    """The model's predictions in the window (rows the model answered)."""
    import pandas as pd

    return pd.Series([r.prediction for r in rows if r.prediction is not None])


def agreement_ratio(rows: list[WindowRow]) -> float | None:
    judged = [r.agreed for r in rows if r.agreed is not None]
    return sum(judged) / len(judged) if judged else None
