"""Measure the statistics of live performance on the credit plug-in (docs/PERFORMANCE.md).

    PYTHONPATH=. python scripts/performance_stats.py               # credit_risk:latest, 200 windows
    PYTHONPATH=. python scripts/performance_stats.py --windows 40 --no-doc   # a quick look

Measures whatever model the store calls `credit_risk:latest` (rerun it after retraining), with the
model's and the rules' outputs computed as the yardstick computes them (training/yardstick.py):
1. routing on the paired delta: the share of resampled in-distribution labelled windows (bootstrap
   windows of the test split) where "the model is below the rules" (the interval's upper end
   below 0): the false-alarm rate; the same share on concept-drift streams (the inputs do not
   move, the outcomes do): the power; and, on synthetic scorers of exactly equal strength, the
   rate at the boundary, where the false-alarm rate is highest;
2. the label-free estimate (CBPE): calibration fitted on the validation split, error of estimated
   vs realized accuracy and ROC AUC on windows of 500 test rows, in distribution and under a
   covariate shift (older applicants), beside the realized metrics' own spread between windows;
3. the cost of one paired check on a window of 2000 rows.
Writes docs/performance_stats.json and the measured section of docs/PERFORMANCE.md (between its
markers; the rest of the file is left as it is).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from apps.credit.app import CREDIT_APP
from apps.credit.data import labels, load_credit_data, split_data, to_rows
from monitors.performance import Calibration, estimate, paired_delta, realized
from monitors.tasks import OutputPolicy
from service.scoring.model import load_model

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PERFORMANCE.md"
OUT = ROOT / "docs" / "performance_stats.json"
START, END = "<!-- performance-stats:start -->", "<!-- performance-stats:end -->"
THRESHOLD = 0.5  # config/mlguard.yaml decision.threshold, as the yardstick is computed
ROUTING_SIZES = (500, 1000, 2000)  # 2000: performance.window's default
ESTIMATE_SIZE = 500
METRICS = ("roc_auc", "accuracy")  # the routing metric (binary default) and the simplest one
IDENTITY = Calibration((0.0, 1.0), (0.0, 1.0), 0)  # the model's raw probabilities, for comparison


@dataclass(frozen=True)
class Scored:
    """Labelled rows of one split, with each scorer's probability of default."""

    frame: pd.DataFrame
    y: np.ndarray  # 1: bad (defaulted)
    model: np.ndarray
    rules: np.ndarray


def score(predict_rows: Callable[[list[dict]], Any], frame: pd.DataFrame) -> Scored:
    """As training/yardstick.py scores the holdout: the model on the plug-in's features of the
    request rows, the rules on the request rows, both through the task's output."""
    task, policy = CREDIT_APP.task, OutputPolicy(THRESHOLD)
    rows = to_rows(frame, CREDIT_APP.inputs.names)
    raw = np.asarray(predict_rows([CREDIT_APP.features_of(r) for r in rows]), dtype=float)
    model = np.array([out.score for out in task.from_model(raw, policy)], dtype=float)
    rules = np.array([task.from_rules(CREDIT_APP.heuristic.score(r), policy).score for r in rows])
    return Scored(frame, labels(frame), model, rules)


# --- 1. routing on the paired delta ------------------------------------------------------------

Outcomes = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # window rows -> outcomes


def drift_scenarios(test: Scored) -> dict[str, tuple[str, Outcomes]]:
    """Concept drift: the same applicants (the inputs do not move), outcomes from a changed world."""
    young = test.frame["age"].to_numpy() < 30
    disagree = (test.model >= THRESHOLD) != (test.rules >= THRESHOLD)
    rules_decision = (test.rules >= THRESHOLD).astype(int)

    def follow_rules(share: float) -> Outcomes:
        def outcomes(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            changed = rng.random(len(rows)) < share
            drawn = (rng.random(len(rows)) < test.rules[rows]).astype(int)
            return np.where(changed, drawn, test.y[rows])
        return outcomes

    return {
        "in_distribution": ("in distribution: the test split's own outcomes",
                            lambda rows, rng: test.y[rows]),
        "rules_world": ("every outcome drawn with the rules' probability",
                        follow_rules(1.0)),
        "half_rules_world": ("half the outcomes drawn with the rules' probability",
                             follow_rules(0.5)),
        "disagreements_follow_rules": ("where model and rules decide differently, the outcome is the rules' decision",
                                       lambda rows, rng: np.where(disagree[rows], rules_decision[rows], test.y[rows])),
        "young_inverted": ("outcomes of applicants under 30 inverted",
                           lambda rows, rng: np.where(young[rows], 1 - test.y[rows], test.y[rows])),
    }


def routing(test: Scored, windows: int, resamples: int, seed: int, bar: tqdm) -> dict[str, Any]:
    """Per scenario and window size: the share of windows judged 'model below rules'."""
    out: dict[str, Any] = {}
    for s_i, (name, (label, outcomes)) in enumerate(drift_scenarios(test).items()):
        out[name] = {"label": label, "sizes": {}}
        for size in ROUTING_SIZES:
            rng = np.random.default_rng([seed, s_i, size])
            below = dict.fromkeys(METRICS, 0)
            estimates: dict[str, list[float]] = {m: [] for m in METRICS}
            for _ in range(windows):
                rows = rng.integers(0, len(test.y), size)
                y = outcomes(rows, rng)
                for metric in METRICS:
                    d = paired_delta("binary", metric, y, test.model[rows], test.rules[rows], THRESHOLD,
                                     resamples=resamples)
                    below[metric] += bool(d.high is not None and d.high < 0)
                    estimates[metric].append(d.estimate)
                bar.update()
            out[name]["sizes"][size] = {
                m: {"below_rules_share": below[m] / windows, "mean_delta": float(np.mean(estimates[m]))}
                for m in METRICS
            }
    return out


def boundary(windows: int, resamples: int, seed: int, bar: tqdm) -> dict[str, Any]:
    """Synthetic scorers of exactly equal strength (one signal plus independent noise of the same
    size, outcomes at the credit data's default rate): the true delta is 0, the worst case for
    false alarms. A 95% interval should end below 0 in about 2.5% of windows."""
    out: dict[str, Any] = {}
    for size in ROUTING_SIZES:
        rng = np.random.default_rng([seed, 99, size])
        below = dict.fromkeys(METRICS, 0)
        for _ in range(windows):
            y = (rng.random(size) < 0.28).astype(int)
            signal = y + rng.normal(0, 1, size)
            model = 1 / (1 + np.exp(-(signal + rng.normal(0, 1, size))))
            rules = 1 / (1 + np.exp(-(signal + rng.normal(0, 1, size))))
            for metric in METRICS:
                d = paired_delta("binary", metric, y, model, rules, THRESHOLD, resamples=resamples)
                below[metric] += bool(d.high < 0)
            bar.update()
        out[size] = {m: below[m] / windows for m in METRICS}
    return out


# --- 2. the label-free estimate ----------------------------------------------------------------

def shifts(test: Scored) -> dict[str, tuple[str, np.ndarray]]:
    age = test.frame["age"].to_numpy()
    median, q3 = np.percentile(age, [50, 75])
    everyone = np.arange(len(age))
    return {
        "in_distribution": ("in distribution: all test rows", everyone),
        "older_half": (f"covariate shift: applicants aged {median:g} or more", everyone[age >= median]),
        "oldest_quarter": (f"covariate shift: applicants aged {q3:g} or more", everyone[age >= q3]),
    }


def cbpe_error(validation: Scored, test: Scored, windows: int, seed: int, bar: tqdm) -> dict[str, Any]:
    calibration = Calibration.fit(validation.model, validation.y)
    age = test.frame["age"].to_numpy()
    # On its own calibration rows the estimate should equal the realized values; the gap is the
    # calibration's own optimism (isotonic steps overfit a little).
    on_own = estimate(validation.model, THRESHOLD, calibration)
    own_real = realized("binary", validation.y, validation.model, THRESHOLD)
    out: dict[str, Any] = {
        "calibration_rows": calibration.rows,
        "calibration_knots": len(calibration.x),
        "on_calibration_rows": {m: {"estimated": on_own[m], "realized": own_real[m]} for m in ("accuracy", "roc_auc")},
        "window": ESTIMATE_SIZE,
        "shifts": {},
    }
    for s_i, (name, (label, pool)) in enumerate(shifts(test).items()):
        rng = np.random.default_rng([seed, 7, s_i])
        real, est, raw, ages = [], [], [], []
        for _ in range(windows):
            rows = rng.choice(pool, ESTIMATE_SIZE)
            r = realized("binary", test.y[rows], test.model[rows], THRESHOLD)
            real.append([r["accuracy"], r["roc_auc"]])
            e = estimate(test.model[rows], THRESHOLD, calibration)
            est.append([e["accuracy"], e["roc_auc"]])
            u = estimate(test.model[rows], THRESHOLD, IDENTITY)
            raw.append([u["accuracy"], u["roc_auc"]])
            ages.append(age[rows].mean())
            bar.update()
        real_, err, raw_err = np.array(real), np.array(est) - np.array(real), np.array(raw) - np.array(real)
        out["shifts"][name] = {
            "label": label,
            "pool_rows": len(pool),
            "mean_age": float(np.mean(ages)),
            **{
                metric: {
                    "mae": float(np.abs(err[:, k]).mean()),
                    "bias": float(err[:, k].mean()),
                    "noise_floor_sd": float(real_[:, k].std()),
                    "mean_realized": float(real_[:, k].mean()),
                    "mae_raw_probabilities": float(np.abs(raw_err[:, k]).mean()),
                }
                for k, metric in enumerate(("accuracy", "roc_auc"))
            },
        }
    return out


# --- 3. cost ------------------------------------------------------------------------------------

def cost(test: Scored, resamples: int, seed: int, repeats: int = 15) -> dict[str, float]:
    """Median milliseconds per call on a window of 2000 rows (one core, this machine's load)."""
    rng = np.random.default_rng([seed, 2000])
    rows = rng.integers(0, len(test.y), 2000)
    y, model, rules = test.y[rows], test.model[rows], test.rules[rows]
    calibration = Calibration.fit(test.model, test.y)
    # The bootstrap's AUC costs O(resamples x distinct scores): the worst case has no ties at all.
    distinct_model, distinct_rules = rng.random(2000), rng.random(2000)
    calls = {
        "paired_roc_auc_ms": lambda: paired_delta("binary", "roc_auc", y, model, rules, THRESHOLD, resamples=resamples),
        "paired_roc_auc_distinct_scores_ms": lambda: paired_delta(
            "binary", "roc_auc", y, distinct_model, distinct_rules, THRESHOLD, resamples=resamples),
        "paired_accuracy_ms": lambda: paired_delta("binary", "accuracy", y, model, rules, THRESHOLD, resamples=resamples),
        "realized_all_metrics_ms": lambda: realized("binary", y, model, THRESHOLD),
        "cbpe_estimate_ms": lambda: estimate(model, THRESHOLD, calibration),
    }
    out = {}
    for name, call in calls.items():
        call()  # warm
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        out[name] = round(float(np.median(times)), 2)
    return out


# --- the report ---------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(results: dict[str, Any]) -> str:
    s, yard = results["settings"], results["yardstick"]
    sizes = [str(n) for n in ROUTING_SIZES]
    false_alarm = {m: max(results["routing"]["in_distribution"]["sizes"][n][m]["below_rules_share"] for n in sizes)
                   for m in METRICS}
    at_boundary = {m: max(results["boundary"][n][m] for n in sizes) for m in METRICS}
    est = results["cbpe"]["shifts"]
    shifted = max(v["accuracy"]["mae"] for k, v in est.items() if k != "in_distribution")
    inside = est["in_distribution"]["accuracy"]
    summary = [
        (f"- False alarms of one check, in distribution (worst window size): ROC AUC "
        f"{pct(false_alarm['roc_auc'])}, accuracy {pct(false_alarm['accuracy'])} (goal ≤ 5%: "
        f"{'met' if max(false_alarm.values()) <= 0.05 else 'MISSED'}); at the boundary (equal scorers) "
        f"{pct(at_boundary['roc_auc'])} and {pct(at_boundary['accuracy'])} (nominal 2.5%)."),
        (f"- CBPE accuracy error, windows of {results['cbpe']['window']}: MAE {inside['mae']:.4f} in "
        f"distribution (guide ≈ 0.02; noise floor {inside['noise_floor_sd']:.4f}), at most "
        f"{shifted:.4f} under the age shifts (guide ≈ 0.03); ROC AUC: "
        f"{est['in_distribution']['roc_auc']['mae']:.4f} in distribution."),
        (f"- One paired check at window 2000: {results['cost']['paired_roc_auc_ms']} ms (ROC AUC), "
        f"{results['cost']['paired_roc_auc_distinct_scores_ms']} ms with all scores distinct."),
    ]
    lines = [
        START,
        "## Measured on the credit plug-in",
        "",
        (f"Measured {results['finished_at']} by `{results['command']}` on model `{results['model']}` "
        f"({results['machine']['cpus']} CPUs, load average at start "
        f"{results['machine']['load_average_at_start']}). Test split: {yard['rows']} rows; there the model "
        f"scores ROC AUC {yard['model']['roc_auc']:.4f} and the rules {yard['rules']['roc_auc']:.4f}; "
        f"model minus rules {yard['delta']['estimate']:+.4f}, 95% interval "
        f"[{yard['delta']['low']:+.4f}, {yard['delta']['high']:+.4f}]"
        f"{' (it includes 0: on these rows the model is not better with confidence)' if yard['delta']['low'] <= 0 else ''}. "
        f"{s['windows']} windows per cell, {s['resamples']} bootstrap resamples per check, "
        f"threshold {THRESHOLD}."),
        "",
        *summary,
        "",
        "### Routing: false alarms and power",
        "",
        ("Share of labelled windows (rows drawn with replacement from the test split) where one check "
        "says \"model below rules\" (the 95% interval's upper end below 0). In distribution this is the "
        "false-alarm rate (goal ≤ 5%); under concept drift (same applicants, changed outcomes) it is "
        "the power. With `enter_after` consecutive checks required, the routing rate is at most the "
        "per-check rate."),
        "",
        "| outcomes | metric | mean delta (window 2000) | " + " | ".join(f"window {n}" for n in sizes) + " |",
        "|---|---|---|" + "---|" * len(sizes),
    ]
    for r in results["routing"].values():
        for metric in METRICS:
            cells = [pct(r["sizes"][n][metric]["below_rules_share"]) for n in sizes]
            lines.append(f"| {r['label']} | {metric} | {r['sizes']['2000'][metric]['mean_delta']:+.4f} | "
                         + " | ".join(cells) + " |")
    b = results["boundary"]
    lines += [
        "| synthetic: two scorers of exactly equal strength (true delta 0, the worst case) | roc_auc | 0 | "
        + " | ".join(pct(b[n]["roc_auc"]) for n in sizes) + " |",
        "| (same) | accuracy | 0 | " + " | ".join(pct(b[n]["accuracy"]) for n in sizes) + " |",
        "",
        "### Performance without labels (CBPE): estimation error",
        "",
    ]
    c = results["cbpe"]
    lines += [
        (f"Calibration fitted on the validation split ({c['calibration_rows']} rows, "
        f"{c['calibration_knots']} knots); {s['windows']} windows of {c['window']} test rows each, drawn "
        "with replacement from the rows named. MAE: mean absolute error of the estimate against the "
        "realized value of the same window; bias: mean signed error (estimate minus realized); noise "
        "floor: the realized metric's standard deviation between windows. \"Raw\": the same estimate "
        "from the model's uncalibrated probabilities, for comparison. On the calibration rows "
        f"themselves: estimated accuracy {c['on_calibration_rows']['accuracy']['estimated']:.4f} vs realized "
        f"{c['on_calibration_rows']['accuracy']['realized']:.4f}, estimated ROC AUC "
        f"{c['on_calibration_rows']['roc_auc']['estimated']:.4f} vs realized "
        f"{c['on_calibration_rows']['roc_auc']['realized']:.4f}; on the whole test split the model's "
        f"realized accuracy is {yard['model']['accuracy']:.4f} and ROC AUC {yard['model']['roc_auc']:.4f}: "
        "the two splits alone disagree by "
        f"{c['on_calibration_rows']['accuracy']['realized'] - yard['model']['accuracy']:+.4f} and "
        f"{c['on_calibration_rows']['roc_auc']['realized'] - yard['model']['roc_auc']:+.4f} (validation "
        "minus test)."),
        "",
        "| windows | mean age | accuracy MAE | bias | noise floor | raw MAE | ROC AUC MAE | bias | noise floor | raw MAE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sh in c["shifts"].values():
        a, u = sh["accuracy"], sh["roc_auc"]
        lines.append(
            f"| {sh['label']} ({sh['pool_rows']} rows) | {sh['mean_age']:.1f} | "
            f"**{a['mae']:.4f}** | {a['bias']:+.4f} | {a['noise_floor_sd']:.4f} | {a['mae_raw_probabilities']:.4f} | "
            f"**{u['mae']:.4f}** | {u['bias']:+.4f} | {u['noise_floor_sd']:.4f} | {u['mae_raw_probabilities']:.4f} |"
        )
    k = results["cost"]
    lines += [
        "",
        "### Cost",
        "",
        (f"Median of 15 calls on a window of 2000 labelled rows, one core: paired check on ROC AUC "
         f"({s['resamples']} resamples) **{k['paired_roc_auc_ms']} ms** (the window's scores take at "
         f"most {yard['rows']} distinct values; with 2000 distinct scores, the worst case: "
         f"**{k['paired_roc_auc_distinct_scores_ms']} ms**), on accuracy {k['paired_accuracy_ms']} ms; "
         f"all realized binary metrics {k['realized_all_metrics_ms']} ms; the CBPE estimate "
         f"{k['cbpe_estimate_ms']} ms."),
        END,
    ]
    return "\n".join(lines)


def write_doc(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=f"{CREDIT_APP.model_name}:latest", help="store tag to measure")
    p.add_argument("--windows", type=int, default=200, help="windows per scenario and size (>= 200 for the doc)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per paired check")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--no-doc", action="store_true", help="print the section, write neither file")
    args = p.parse_args(argv)

    at_start = machine()
    loaded = load_model(CREDIT_APP, args.model, 60.0, True)
    split = split_data(load_credit_data())
    validation, test = score(loaded.model.predict_rows, split.validation), score(loaded.model.predict_rows, split.test)
    steps = args.windows * (len(ROUTING_SIZES) * (len(drift_scenarios(test)) + 1) + len(shifts(test)))
    with tqdm(total=steps, desc="performance stats", unit="window") as bar:
        results: dict[str, Any] = {
            "routing": routing(test, args.windows, args.resamples, args.seed, bar),
            "boundary": boundary(args.windows, args.resamples, args.seed, bar),
            "cbpe": cbpe_error(validation, test, args.windows, args.seed, bar),
        }
    results["cost"] = cost(test, args.resamples, args.seed)
    delta = paired_delta("binary", "roc_auc", test.y, test.model, test.rules, THRESHOLD, resamples=args.resamples)
    results = json.loads(json.dumps({  # window sizes become string keys, as the JSON file has them
        "model": loaded.version,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "PYTHONPATH=. python scripts/performance_stats.py"
                   + (f" --windows {args.windows}" if args.windows != 200 else ""),
        "machine": at_start,
        "settings": {"windows": args.windows, "resamples": args.resamples, "seed": args.seed,
                     "threshold": THRESHOLD},
        "yardstick": {"rows": len(test.y), "model": realized("binary", test.y, test.model, THRESHOLD),
                      "rules": realized("binary", test.y, test.rules, THRESHOLD), "delta": delta.to_dict()},
        **results,
    }))
    block = markdown(results)
    if args.no_doc:
        print(block)
        return
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(args.doc, block)
    print(block)


if __name__ == "__main__":
    main()
