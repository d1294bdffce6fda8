"""Loading the loan applications and splitting them the same way every time."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

DATA_PATH = Path(__file__).resolve().parents[2] / "data" / "credit_data.csv"
TARGET = "status"
POSITIVE = "bad"  # the model predicts the probability of default
SEED = 20240611


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def load_credit_data(path: Path = DATA_PATH) -> pd.DataFrame:
    frame = pd.read_csv(path)
    frame.columns = [c.lower() for c in frame.columns]
    return frame


def split_data(frame: pd.DataFrame, seed: int = SEED) -> Split:
    """60/20/20, stratified on the target, seeded: the same rows land in the same split every run."""
    train, rest = train_test_split(frame, test_size=0.4, random_state=seed, stratify=frame[TARGET])
    validation, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=rest[TARGET])
    return Split(train.reset_index(drop=True), validation.reset_index(drop=True), test.reset_index(drop=True))


def labels(frame: pd.DataFrame) -> np.ndarray:
    return (frame[TARGET] == POSITIVE).to_numpy(dtype=int)


def to_rows(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Rows as the service receives them: missing values are None, integers stay integers."""
    sub = frame[columns].astype(object)
    return sub.where(sub.notna(), None).to_dict("records")
