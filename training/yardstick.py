"""The yardstick: the model and the rules side by side on the same held-out rows.

"Be the algorithm": the rules come first and stay the yardstick the model must beat. Each task is
scored on its own terms, the model and the rules by the same function, plus how often the two
agree (the baseline of the live shadow-agreement signal):
- binary: ROC AUC (the deciding metric), accuracy, precision and recall of the positive class at
  the threshold, the positive-decision rate;
- multiclass: accuracy (deciding), macro F1;
- regression: MAE (deciding, lower is better), RMSE.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    recall_score,
    roc_auc_score,
)

from monitors.tasks import InvalidOutput, Output, OutputPolicy
from service.spec import GuardedApp

DECIDING_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "mae"}
LOWER_IS_BETTER = {"mae", "rmse"}


def _r(x: float) -> float:
    return round(float(x), 4)


def _binary(app: GuardedApp, y: np.ndarray, outs: list[Output]) -> dict[str, float]:
    positive = app.task.decision_names[1]
    p = np.array([o.score for o in outs])
    decided = np.array([o.decision == positive for o in outs], dtype=int)
    truth = (y == app.task.classes[1]).astype(int)
    return {
        "roc_auc": _r(roc_auc_score(truth, p)),
        "accuracy": _r(accuracy_score(truth, decided)),
        "precision": _r(precision_score(truth, decided, zero_division=0)),
        "recall": _r(recall_score(truth, decided, zero_division=0)),
        "positive_rate": _r(decided.mean()),
    }


def _multiclass(app: GuardedApp, y: np.ndarray, outs: list[Output]) -> dict[str, float]:
    decided = np.array([o.decision for o in outs])
    return {
        "accuracy": _r(accuracy_score(y, decided)),
        "macro_f1": _r(f1_score(y, decided, average="macro", labels=list(app.task.classes))),
    }


def _regression(app: GuardedApp, y: np.ndarray, outs: list[Output]) -> dict[str, float]:
    v = np.array([o.score for o in outs], dtype=float)
    y = y.astype(float)
    return {
        "mae": _r(mean_absolute_error(y, v)),
        "rmse": _r(np.sqrt(mean_squared_error(y, v))),
    }


SCORERS = {"binary": _binary, "multiclass": _multiclass, "regression": _regression}


def yardstick(
    app: GuardedApp,
    predict_rows: Any,  # the Model protocol's predict_rows
    rows: list[dict[str, Any]],  # held-out request rows, as clients would send them
    y: np.ndarray,  # their true targets (class names, or values)
    policy: OutputPolicy,
) -> dict[str, Any]:
    task = app.task
    outs = task.from_model(np.asarray(predict_rows([app.features_of(r) for r in rows]), dtype=float), policy)
    invalid = [o for o in outs if isinstance(o, InvalidOutput)]
    if invalid:
        raise ValueError(f"the model answered {len(invalid)} invalid outputs on the holdout, e.g. {invalid[0]}")
    rules = [task.from_rules(app.heuristic.score(r), policy) for r in rows]
    score = SCORERS[task.kind]
    metric = DECIDING_METRIC[task.kind]
    model_scores, rules_scores = score(app, y, outs), score(app, y, rules)
    better = (
        model_scores[metric] < rules_scores[metric] if metric in LOWER_IS_BETTER
        else model_scores[metric] > rules_scores[metric]
    )
    return {
        "rows": len(rows),
        "metric": metric,
        "model": model_scores,
        "heuristic": rules_scores,
        # How often model and rules answer alike on held-out rows: the baseline the live
        # shadow-agreement ratio is compared with (mlguard_shadow_agreement_baseline).
        "agreement": _r(np.mean([task.agree(m, r, policy) for m, r in zip(outs, rules)])),
        "model_beats_rules": bool(better),
        **({"threshold": policy.threshold} if task.kind == "binary" else {}),
    }


def table(report: dict[str, Any]) -> str:
    """The yardstick as a Markdown table (the README's, the CLI's)."""
    names = list(report["model"])
    lines = [
        "| scorer | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for who in ("model", "heuristic"):
        lines.append(f"| {who} | " + " | ".join(f"{report[who][n]:.4g}" for n in names) + " |")
    verdict = "beats" if report["model_beats_rules"] else "does NOT beat"
    lines.append(
        f"\n{report['rows']} held-out rows; the model {verdict} the rules on {report['metric']}; "
        f"they agree on {report['agreement']:.1%} of rows."
    )
    return "\n".join(lines)
