"""Side-by-side evaluation of the model and the heuristic on the same rows."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score


def score_table(y: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, float]:
    decided = (probability >= threshold).astype(int)
    return {
        "roc_auc": round(float(roc_auc_score(y, probability)), 4),
        "accuracy": round(float(accuracy_score(y, decided)), 4),
        "precision": round(float(precision_score(y, decided, zero_division=0)), 4),
        "recall": round(float(recall_score(y, decided, zero_division=0)), 4),
        "decline_rate": round(float(decided.mean()), 4),
    }


def agreement(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """How often two scorers take the same decision: the label-free health baseline."""
    return round(float(((a >= threshold) == (b >= threshold)).mean()), 4)
