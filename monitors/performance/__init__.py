"""Performance on labels: realized metrics, the paired model-vs-rules delta, label-free estimates.

Pure numpy, no I/O: the caller (the performance monitor) hands in outcomes and scores as arrays.
- `realized`: the task's metrics on labelled rows (binary, multiclass, regression);
- `paired`: model minus rules on the same rows, with a paired-bootstrap interval, and the routing
  question "is the model worse than the rules, with confidence?";
- `cbpe`: for binary models, accuracy and ROC AUC estimated from calibrated probabilities, before
  the labels arrive (confidence-based performance estimation).
docs/PERFORMANCE.md has the statistics and their measured error and false-alarm rates.
"""
from monitors.performance.cbpe import Calibration, estimate
from monitors.performance.paired import PairedDelta, below_rules, paired_delta
from monitors.performance.realized import DEFAULT_METRIC, LOWER_IS_BETTER, METRICS, realized

__all__ = [
    "DEFAULT_METRIC",
    "LOWER_IS_BETTER",
    "METRICS",
    "Calibration",
    "PairedDelta",
    "below_rules",
    "estimate",
    "paired_delta",
    "realized",
]
