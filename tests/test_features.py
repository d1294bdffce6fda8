"""The features of a plug-in, derived from its request schema (FeatureSchema.from_request) and
the GuardedApp built on it: names as clients send them, kinds from the types."""
from __future__ import annotations

import datetime
import enum
import math
from typing import Annotated, Literal, Optional, Union

import pytest
from pydantic import BaseModel, ConfigDict, Field

from fallbacks.base import HeuristicResult
from monitors.features import Feature, FeatureSchema, FeatureTransform
from monitors.tasks import Binary
from service.spec import GuardedApp


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Trip(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    distance: float
    stops: int
    fare: Optional[float] = None  # noqa: UP045 -- the typing spelling must work too
    seats: int | None = None
    cabin: Literal["economy", "business"]
    refundable: bool
    colour: Colour
    weight: Annotated[float, Field(ge=0)]
    night: Optional[Literal["yes", "no"]] = None  # noqa: UP045
    zone: int = Field(json_schema_extra={"feature_kind": "categorical"})


class Rules:
    name = "always_no"

    def score(self, row):
        return HeuristicResult(probability=0.0, rules=("no",))


def test_kinds_and_names_come_from_the_schema_in_declaration_order() -> None:
    schema = FeatureSchema.from_request(Trip)
    assert schema.names == [
        "from", "distance", "stops", "fare", "seats", "cabin", "refundable", "colour", "weight",
        "night", "zone",
    ]
    assert schema.numeric == ["distance", "stops", "fare", "seats", "weight"]
    assert schema.categorical == ["from", "cabin", "refundable", "colour", "night", "zone"]


def test_an_alias_names_the_feature_as_clients_send_it() -> None:
    class Flight(BaseModel):
        from_: str = Field(alias="from")
        to: str

    (origin, _) = FeatureSchema.from_request(Flight).features
    assert origin == Feature("from", "categorical")


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [
        (int, "numeric"), (float, "numeric"), (Optional[int], "numeric"),  # noqa: UP045
        (float | None, "numeric"), (Annotated[int, Field(le=5)], "numeric"),
        (str, "categorical"), (bool, "categorical"), (Literal["a", "b"], "categorical"),
        (Literal[1, 2], "categorical"), (Colour, "categorical"), (str | None, "categorical"),
    ],
)
def test_each_supported_type(annotation, kind: str) -> None:
    from pydantic import create_model

    Row = create_model("Row", value=(annotation, ...))
    assert FeatureSchema.from_request(Row).features == (Feature("value", kind),)


@pytest.mark.parametrize(
    "annotation",
    [datetime.date, list[int], dict[str, float], Union[int, str], bytes],  # noqa: UP007
)
def test_an_unsupported_type_raises_naming_the_field(annotation) -> None:
    from pydantic import create_model

    Row = create_model("Booking", ok=(int, ...), when=(annotation, ...))
    with pytest.raises(TypeError, match=r"Booking\.when") as raised:
        FeatureSchema.from_request(Row)
    assert "feature_kind" in str(raised.value)  # and says how to declare it


def test_the_schema_refuses_duplicate_names_and_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unique"):
        FeatureSchema((Feature("a", "numeric"), Feature("a", "categorical")))
    with pytest.raises(ValueError, match="numeric or categorical"):
        FeatureSchema((Feature("a", "ordinal"),))  # type: ignore[arg-type]


def test_round_trip_and_matrix() -> None:
    schema = FeatureSchema.from_request(Trip)
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    small = FeatureSchema((Feature("x", "numeric"), Feature("c", "categorical")))
    matrix = small.matrix([{"x": 1.5, "c": "a"}, {"x": None, "c": None}, {"c": "b"}])
    assert matrix.shape == (3, 2) and matrix[0].tolist() == [1.5, "a"]
    assert math.isnan(matrix[1][0]) and math.isnan(matrix[1][1]) and math.isnan(matrix[2][0])


def test_the_app_derives_inputs_features_and_rows_from_the_schema() -> None:
    app = GuardedApp(
        "trips", Trip, Binary(classes=("on_time", "late"), safe_default="late"), Rules()
    )
    assert app.model_name == "trips" and app.batch_field == "rows"
    assert app.features == app.inputs == FeatureSchema.from_request(Trip)
    trip = Trip.model_validate({
        "from": "LYS", "distance": 420.0, "stops": 0, "cabin": "economy", "refundable": False,
        "colour": "red", "weight": 12.5, "zone": 3,
    })
    row = app.row_of(trip)
    assert row["from"] == "LYS" and "from_" not in row  # keyed by alias, as clients sent it
    assert row["fare"] is None and row["night"] is None  # None when missing
    assert set(row) == set(app.features.names)
    assert app.features_of(row) is row  # no transform: the model sees the request's fields


def test_a_transform_declares_the_models_features() -> None:
    derived = FeatureSchema((Feature("speed", "numeric"),))
    transform = FeatureTransform(lambda row: {"speed": row["distance"] / 2}, derived)
    app = GuardedApp(
        "trips", Trip, Binary(classes=("on_time", "late"), safe_default="late"), Rules(),
        model_name="trip_model", transform=transform,
    )
    assert app.model_name == "trip_model"
    assert app.inputs.names[:2] == ["from", "distance"] and app.features.names == ["speed"]
    assert app.features_of({"distance": 10.0}) == {"speed": 5.0}
