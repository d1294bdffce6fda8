"""Category buckets that keep chi-square honest.

Chi-square compares observed with expected counts; a category the reference never saw has an
expected count of 0 and drives the p-value to 0, and a category expected fewer than ~5 times in a
window makes the test unreliable (home=ignore is 0.5% of the training rows: 1.5 expected in 300).
So categories too rare for the window, unseen categories and missing values share one bucket;
if that bucket itself is still too rare, it joins the least frequent regular category.
"""
from __future__ import annotations

import pandas as pd

MIN_EXPECTED = 5.0  # the textbook minimum expected count per chi-square cell
OTHER = "__other__"


class CategoryBuckets:
    def __init__(self, reference: pd.Series, window_size: int) -> None:
        shares = reference.astype("string").fillna(OTHER).value_counts(normalize=True)
        min_share = MIN_EXPECTED / window_size
        kept = {str(c): float(s) for c, s in shares.items() if c != OTHER and s >= min_share}
        pooled = 1.0 - sum(kept.values())
        self.other = OTHER
        if kept and pooled < min_share:
            self.other = min(kept, key=kept.__getitem__)  # too rare alone: fold into the smallest
        self.kept = frozenset(kept)

    def apply(self, column: pd.Series) -> pd.Series:
        values = column.astype("string")
        return values.where(values.isin(self.kept), self.other).astype(str)
