"""The PNG chart of a benchmark run: rows per second and p99 latency, per scenario and concurrency."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the chart goes to a file
import matplotlib.pyplot as plt


def draw(results: dict, path: Path) -> None:
    concs = list(results["scenarios"])
    # Every scenario measured at any concurrency (adaptive batching only at the highest).
    names = list(dict.fromkeys(n for c in concs for n in results["scenarios"][c]))
    width = 0.8 / len(concs)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for k, conc in enumerate(concs):
        xs = [i + (k - (len(concs) - 1) / 2) * width for i in range(len(names))]
        scenarios = results["scenarios"][conc]
        nan = {"rows_per_s": float("nan"), "p99_ms": float("nan")}  # no bar
        top.bar(xs, [scenarios.get(n, nan)["rows_per_s"] for n in names], width, label=f"concurrency {conc}")
        bottom.bar(xs, [scenarios.get(n, nan)["p99_ms"] for n in names], width, label=f"concurrency {conc}")
    top.set_yscale("log")
    top.set_ylabel("rows / s (log)")
    top.set_title(f"mlguard vs bare BentoML ({results['machine']['cpus']} CPUs, {results['size']} run)")
    bottom.set_yscale("log")
    bottom.set_ylabel("p99 latency, ms (log)")
    bottom.set_xticks(range(len(names)), names, rotation=15)
    top.legend()
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
