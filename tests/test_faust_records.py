"""Records with Faust's class options and defaults, and Faust's ``__faust`` wire format."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, List, Optional  # noqa: UP035 - Faust apps are written this way

import pytest

import streamtrio as faust
from streamtrio._codecs import Schema


class Point(faust.Record, namespace="geo.Point"):
    x: float
    y: float


class Shape(faust.Record, namespace="geo.Shape", isodates=True, serializer="json"):
    name: str
    points: List[Point]  # noqa: UP006
    created: datetime = None  # type: ignore[assignment]  # Faust reads this as Optional


class Circle(Shape, namespace="geo.Circle"):
    radius: float = 1.0


class Drawing(faust.Record, namespace="geo.Drawing", polymorphic_fields=True):
    title: str
    main: Shape
    extra: Any = None
    layers: dict = {}


class Strict(faust.Record, validation=True):
    n: int
    at: Optional[datetime] = None  # noqa: UP045


def test_every_faust_class_option_is_accepted() -> None:
    class Everything(
        faust.Record,
        serializer="json",
        namespace="x.Everything",
        include_metadata=False,
        isodates=True,
        decimals=True,
        validation=False,
        coerce=False,
        polymorphic_fields=True,
        allow_blessed_key=True,
        date_parser=datetime.fromisoformat,
        frozen=True,
    ):
        at: datetime

    assert Everything(at="2024-05-01T10:00:00").at == datetime(2024, 5, 1, 10)
    assert "__faust" not in Everything(at=datetime(2024, 1, 1)).to_representation()


def test_defaults_do_not_validate_like_faust() -> None:
    # Faust validates only with validation=True: these are accepted as given
    assert Point(x="1", y=2).x == "1"
    assert Shape(name=5, points=[]).name == 5
    assert Shape(name="s", points=[], created=1700000000).created == 1700000000
    # what can be converted is converted: tuples for lists, ISO strings for datetimes
    shape = Shape(name="s", points=({"x": 1, "y": 2},), created="2024-05-01T10:00:00+00:00")
    assert shape.points == [Point(1.0, 2.0)]
    assert shape.created == datetime.fromisoformat("2024-05-01T10:00:00+00:00")
    assert Shape(name="s", points=[]).created is None


def test_validation_true_keeps_strict_checks() -> None:
    with pytest.raises(faust.ValidationError, match=r"Strict\.n: expected int"):
        Strict(n="1")
    with pytest.raises(faust.ValidationError, match=r"Strict\.n: expected int"):
        Strict.from_data({"n": "x"})
    assert Strict(n=1).n == 1


def test_coerce_converts_and_raises_when_it_cannot() -> None:
    class Money(faust.Record, coerce=True):
        amount: Decimal

    assert Money(amount="1.50").amount == Decimal("1.50")
    with pytest.raises(faust.ValidationError):
        Money(amount="lots")


def test_faust_metadata_is_written_by_default() -> None:
    data = Circle(name="c", points=[Point(0, 0)], radius=2.0).to_representation()
    assert data["__faust"] == {"ns": "geo.Circle"}
    assert data["points"][0]["__faust"] == {"ns": "geo.Point"}
    assert Point(1, 2).asdict() == {"x": 1, "y": 2}  # asdict has fields only
    # the default namespace is module.QualName, as in Faust
    class Local(faust.Record):
        a: int

    assert Local(1).to_representation()["__faust"] == {"ns": f"{__name__}.{Local.__qualname__}"}


# Bytes as Faust writes them (json.dumps with its default separators, the
# namespace under "__faust"), written down from Faust's documented format.
FAUST_CIRCLE = (
    b'{"name": "c1", "points": [{"x": 1.0, "y": 2.0, "__faust": {"ns": "geo.Point"}}], '
    b'"created": "2024-05-01T10:00:00+00:00", "radius": 3.0, "__faust": {"ns": "geo.Circle"}}'
)


def test_faust_bytes_with_no_declared_type_come_back_as_records() -> None:
    value = Schema().loads_value(FAUST_CIRCLE)
    assert isinstance(value, Circle)
    assert value.points == [Point(1.0, 2.0)]
    assert value.created == datetime.fromisoformat("2024-05-01T10:00:00+00:00")
    # inside lists and dicts too (table values, lists of records)
    listed = Schema().loads_value(b'{"all": [' + FAUST_CIRCLE + b"]}")
    assert isinstance(listed["all"][0], Circle)
    # a namespace nobody registered stays a dict
    assert Schema().loads_value(b'{"a": 1, "__faust": {"ns": "nowhere.X"}}') == {
        "a": 1,
        "__faust": {"ns": "nowhere.X"},
    }


def test_faust_bytes_for_a_declared_base_build_the_subclass() -> None:
    assert isinstance(Schema(value_type=Shape).loads_value(FAUST_CIRCLE), Circle)
    assert isinstance(Shape.loads(FAUST_CIRCLE), Circle)
    drawing = Drawing.loads(
        b'{"title": "t", "main": ' + FAUST_CIRCLE + b', "extra": ' + FAUST_CIRCLE + b', '
        b'"layers": {"l1": ' + FAUST_CIRCLE + b'}, "__faust": {"ns": "geo.Drawing"}}'
    )
    assert isinstance(drawing.main, Circle)
    assert drawing.main.radius == 3.0
    assert isinstance(drawing.extra, Circle)  # Any field: revived by namespace
    assert isinstance(drawing.layers["l1"], Circle)


def test_round_trip_keeps_the_class() -> None:
    drawing = Drawing(title="t", main=Circle(name="c", points=[], radius=2.0))
    back = Schema().loads_value(Schema().dumps_value(drawing))
    assert back == drawing
    assert isinstance(back.main, Circle)


def test_construction_from_decoded_faust_data() -> None:
    data = {"x": 1.0, "y": 2.0, "__faust": {"ns": "geo.Point"}}
    assert Point(**data) == Point(1.0, 2.0)


def test_record_serializer_option_is_the_topic_default() -> None:
    class Packed(faust.Record, serializer="msgpack"):
        a: int

    assert Schema(value_type=Packed).value_codec.name == "msgpack"
    assert Packed.loads(Packed(1).dumps()) == Packed(1)
