from __future__ import annotations

import pandas as pd
import pytest

from monitors.features import Feature, FeatureSchema
from monitors.input_checks import InputChecker
from monitors.output_checks import is_valid_probability
from monitors.reference import ReferenceStats

SCHEMA = FeatureSchema((Feature("x", "numeric"), Feature("c", "categorical")))
FRAME = pd.DataFrame({"x": [0.0, 10.0, 5.0, None], "c": ["a", "b", "a", None]})


def test_reference_stats_describe_the_training_data() -> None:
    stats = ReferenceStats.from_frame(FRAME, SCHEMA)
    # Only what the input checks use: the numeric range and the known categories, missing
    # values ignored (the rows' missing rates are the drift monitor's business).
    assert stats.numeric["x"].min == 0.0 and stats.numeric["x"].max == 10.0
    assert set(vars(stats.numeric["x"])) == {"min", "max"}
    assert stats.categorical["c"].categories == ("a", "b")
    assert ReferenceStats.from_dict(stats.to_dict()) == stats


def test_range_tolerance_widens_the_training_range() -> None:
    checker = InputChecker(ReferenceStats.from_frame(FRAME, SCHEMA), range_tolerance=0.1)
    assert checker.check({"x": 11.0, "c": "a"}) == []  # within 10% of the width beyond max
    assert checker.check({"x": -1.0, "c": "a"}) == []
    (v,) = checker.check({"x": 11.5, "c": "a"})
    assert (v.check, v.field, v.reason) == ("input.out_of_range", "x", "input.out_of_range:x")


def test_unknown_category_and_missing_values() -> None:
    checker = InputChecker(ReferenceStats.from_frame(FRAME, SCHEMA), range_tolerance=0.0)
    assert checker.check({"x": None, "c": None}) == []  # missing is the model's to handle
    assert checker.check({"x": float("nan"), "c": "a"}) == []  # NaN is missing too, not out of range
    assert checker.check({"x": 10, "c": "a"}) == []  # an int at the bound
    (v,) = checker.check({"x": 1.0, "c": "zzz"})
    assert v.reason == "input.unknown_category:c"
    both = checker.check({"x": 100.0, "c": "zzz"})
    assert [v.check for v in both] == ["input.out_of_range", "input.unknown_category"]


def test_output_check_rejects_what_is_not_a_probability() -> None:
    assert is_valid_probability(0.0) and is_valid_probability(1.0) and is_valid_probability(0.3)
    for bad in (float("nan"), float("inf"), -0.01, 1.01, float("-inf")):
        assert not is_valid_probability(bad)


def test_categories_are_compared_as_strings() -> None:
    schema = FeatureSchema((Feature("flag", "categorical"),))
    stats = ReferenceStats.from_frame(pd.DataFrame({"flag": [True, False, True]}), schema)
    assert stats.categorical["flag"].categories == ("False", "True")
    checker = InputChecker(stats, range_tolerance=0.0)
    assert checker.check({"flag": True}) == [] and checker.check({"flag": False}) == []
    (v,) = checker.check({"flag": "maybe"})
    assert v.reason == "input.unknown_category:flag"


def test_a_numeric_feature_without_any_training_value_is_refused() -> None:
    frame = pd.DataFrame({"x": [None, None], "c": ["a", "b"]})
    with pytest.raises(ValueError, match="'x' has no value"):
        ReferenceStats.from_frame(frame, SCHEMA)
