"""The rolling window: the last `window_size` distinct served rows, shared by every worker's traffic.

Two rules keep one client from steering it (docs/DRIFT.md, "One client cannot steer the window"):

- **An identical feature row counts once.** A row whose features are already in the window is not
  admitted again; the copy inside keeps its place (and its sender) and ages out like any other.
- **No client holds more than `max_client_share` of the window.** A row carries its sender's
  hashed identity when the deployment provides one; a client at its cap loses its own oldest row
  to its new one, so its share stays bounded and the window still shows its current traffic. Rows
  without an identity are not capped (they are still deduplicated).

Memory is fixed whatever the traffic: at most `size` rows, each with a 16-byte key. A lock because
the ingest endpoint and the checker thread touch it concurrently.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where frames are built, in the drift process, not by API workers
    import pandas as pd

RowKey = Callable[[dict[str, Any]], bytes]


@dataclass(frozen=True)
class WindowRow:
    features: dict[str, Any]
    prediction: float | str | None  # the model's (probability, class or value) when it answered
    agreed: bool | None  # model and rules took the same decision (model-routed rows only)
    client: str | None = None  # the sender's hashed identity (service/worker/drift_feed.py), if any


def row_key(columns: Sequence[str] | None = None) -> RowKey:
    """The key of a row's feature values (`columns` in that order; None: every value, in order).

    A digest of their repr: stable across processes (a fleet's judge and its instances agree),
    equal for equal values (repr(nan) == 'nan', where nan != nan), 16 bytes whatever the row."""
    if columns is None:
        def values(features: dict[str, Any]) -> tuple:
            return tuple(features.values())
    else:
        names = tuple(columns)

        def values(features: dict[str, Any]) -> tuple:
            return tuple(features.get(n) for n in names)

    def key(features: dict[str, Any]) -> bytes:
        return hashlib.blake2b(repr(values(features)).encode(), digest_size=16).digest()

    return key


class DriftWindow:
    def __init__(self, size: int, max_client_share: float = 1.0, key: RowKey | None = None) -> None:
        self._key = key or row_key()
        self._size = size
        self._share = max_client_share
        self._rows: OrderedDict[bytes, WindowRow] = OrderedDict()  # oldest first
        self._by_client: dict[str, deque[bytes]] = {}  # each identified client's keys, oldest first
        self._lock = threading.Lock()
        self.duplicates = 0  # rows not admitted: their features were already in the window
        self.capped = 0  # rows a client lost to its own newer rows (max_client_share)

    @property
    def size(self) -> int:
        return self._size

    @property
    def client_cap(self) -> int:
        """Rows one identified client may hold."""
        return max(1, int(self._share * self._size))

    def __len__(self) -> int:
        return len(self._rows)

    def extend(self, rows: Iterable[WindowRow]) -> None:
        with self._lock:
            for row in rows:
                self._admit(self._key(row.features), row)

    def _admit(self, key: bytes, row: WindowRow) -> None:
        if key in self._rows:
            self.duplicates += 1
            return
        client = row.client
        if client is not None:
            keys = self._by_client.get(client)
            if keys is None:
                keys = self._by_client[client] = deque()
            elif len(keys) >= self.client_cap:
                del self._rows[keys.popleft()]  # the client's oldest makes room for its newest
                self.capped += 1
            keys.append(key)
        self._rows[key] = row
        if len(self._rows) > self._size:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, row = self._rows.popitem(last=False)
        if row.client is not None:
            # Admission order is kept per client too, so the window's oldest is its client's oldest.
            keys = self._by_client[row.client]
            keys.popleft()
            if not keys:
                del self._by_client[row.client]

    def resize(self, size: int, max_client_share: float | None = None) -> None:
        """Keep the newest rows that fit the new bounds (each client's newest under a new cap)."""
        share = self._share if max_client_share is None else max_client_share
        with self._lock:
            if (size, share) == (self._size, self._share):
                return
            rows = list(self._rows.items())
            self._size, self._share = size, share
            self._rows, self._by_client = OrderedDict(), {}
            for key, row in rows:  # replayed oldest first: the bounds evict as they would have
                self._admit(key, row)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._by_client.clear()

    def snapshot(self) -> list[WindowRow]:
        with self._lock:
            return list(self._rows.values())

    def clients(self) -> dict[str, int]:
        """Rows held per identified client (hashed identities)."""
        with self._lock:
            return {client: len(keys) for client, keys in self._by_client.items()}


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
