import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from streamtrio._codecs import Schema
from streamtrio._exceptions import ValidationError
from streamtrio._records import FieldDescriptor, Record


# These tests pin streamtrio's strict mode: validating construction and no
# Faust metadata on the wire (tests/test_faust_records.py covers the defaults).
class StrictRecord(Record, validation=True, include_metadata=False, abstract=True):
    pass


class Address(StrictRecord):
    city: str
    zip: str | None = None


class Order(StrictRecord):
    account_id: str
    amount: int
    price: Decimal = Decimal("0")
    at: datetime | None = None
    tags: list[str] = []
    address: Address | None = None
    items: dict[str, Address] = {}


class Point(StrictRecord, frozen=True):
    x: float
    y: float


class Shapes(StrictRecord):
    ratio: float = 1.0
    flags: set[str] = set()
    coords: tuple[int, ...] = ()
    pair: tuple[str, int] | None = None
    blob: bytes = b""
    ok: bool = False
    extra: Any = None
    either: int | str = 0


class Tree(StrictRecord):
    name: str
    children: list["Tree"] = []


class Dept(StrictRecord):
    # Employee is declared below: resolved when Dept is first used
    boss: "Employee"


class Employee(StrictRecord):
    name: str


# --------------------------------------------------------------------------- #
# construction and validation


def test_keyword_and_positional_construction() -> None:
    by_kw = Order(account_id="a", amount=3)
    by_pos = Order("a", 3)
    assert by_kw == by_pos
    assert by_kw.account_id == "a"
    assert by_kw.amount == 3
    assert by_kw.price == Decimal("0")
    assert by_kw.at is None
    assert by_kw.asdict() == {
        "account_id": "a",
        "amount": 3,
        "price": Decimal("0"),
        "at": None,
        "tags": [],
        "address": None,
        "items": {},
    }


def test_wrong_type_names_class_field_expected_type_and_value() -> None:
    with pytest.raises(ValidationError) as info:
        Order(account_id="a", amount="3")
    message = str(info.value)
    assert "Order.amount" in message
    assert "expected int" in message
    assert "'3'" in message
    assert "str" in message


def test_missing_required_fields_are_all_named() -> None:
    with pytest.raises(ValidationError, match=r"Order: missing required fields 'account_id', "):
        Order()
    with pytest.raises(ValidationError, match=r"missing required field 'amount'"):
        Order(account_id="a")


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nope"):
        Order(account_id="a", amount=1, nope=2)


def test_bool_is_not_an_int() -> None:
    with pytest.raises(ValidationError, match=r"Order\.amount: expected int, got True"):
        Order(account_id="a", amount=True)


def test_int_is_accepted_as_float_and_stored_as_float() -> None:
    p = Point(1, 2.5)
    assert p.x == 1.0
    assert type(p.x) is float


def test_optional_field_takes_none_and_names_the_union_on_error() -> None:
    assert Order(account_id="a", amount=1, at=None).at is None
    with pytest.raises(ValidationError, match=r"Order\.at: expected datetime \| None"):
        Order(account_id="a", amount=1, at="2024-01-01")


def test_strict_construction_does_not_coerce_strings() -> None:
    with pytest.raises(ValidationError, match=r"Order\.price: expected Decimal"):
        Order(account_id="a", amount=1, price="1.5")
    # an int is exact, so it is accepted for a Decimal
    assert Order(account_id="a", amount=1, price=2).price == Decimal(2)


def test_container_element_errors_name_the_position() -> None:
    with pytest.raises(ValidationError, match=r"Order\.tags\[1\]: expected str, got 2 \(int\)"):
        Order(account_id="a", amount=1, tags=["x", 2])
    with pytest.raises(ValidationError, match=r"Order\.items\['home'\]: expected Address"):
        Order(account_id="a", amount=1, items={"home": {"city": "Oslo"}})
    with pytest.raises(ValidationError, match=r"Shapes\.coords\[2\]: expected int"):
        Shapes(coords=(1, 2, "3"))
    with pytest.raises(ValidationError, match=r"Shapes\.flags: expected set\[str\]"):
        Shapes(flags=["a"])


def test_supported_types_accept_their_values() -> None:
    s = Shapes(
        ratio=2,
        flags={"a", "b"},
        coords=(1, 2),
        pair=("k", 1),
        blob=b"\x00\xff",
        ok=True,
        extra=object,
        either="x",
    )
    assert s.ratio == 2.0
    assert s.flags == {"a", "b"}
    assert s.coords == (1, 2)
    assert s.pair == ("k", 1)
    assert s.blob == b"\x00\xff"
    assert s.ok is True
    assert s.extra is object
    assert s.either == "x"
    with pytest.raises(ValidationError, match=r"Shapes\.either: expected int \| str, got 1\.5"):
        Shapes(either=1.5)
    with pytest.raises(ValidationError, match=r"Shapes\.pair: expected tuple\[str, int\]"):
        Shapes(pair=("k", 1, 2))


def test_nested_record_is_validated_by_its_own_class() -> None:
    with pytest.raises(ValidationError, match=r"Address\.city: expected str"):
        Address(city=5)
    order = Order(account_id="a", amount=1, address=Address("Oslo"))
    assert order.address == Address(city="Oslo", zip=None)


def test_bad_default_is_refused_when_the_class_is_declared() -> None:
    with pytest.raises(TypeError, match=r"Bad\.n: default 'x' does not fit int"):

        class Bad(StrictRecord):
            n: int = "x"


def test_unsupported_annotation_is_refused_when_the_class_is_declared() -> None:
    with pytest.raises(TypeError, match=r"Weird\.when: unsupported field type timedelta"):

        class Weird(StrictRecord):
            when: timedelta


def test_record_base_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError, match="subclass"):
        Record()


# --------------------------------------------------------------------------- #
# defaults, equality, repr, frozen


def test_mutable_defaults_are_copied_per_instance() -> None:
    first = Order(account_id="a", amount=1)
    second = Order(account_id="b", amount=2)
    first.tags.append("x")
    first.items["home"] = Address("Oslo")
    assert second.tags == []
    assert second.items == {}
    assert Order.from_data({"account_id": "c", "amount": 3}).tags == []


def test_non_empty_mutable_defaults_are_copied_deeply() -> None:
    class Config(StrictRecord):
        levels: dict[str, list[int]] = {"a": [1]}

    one, two = Config(), Config()
    one.levels["a"].append(2)
    assert two.levels == {"a": [1]}


def test_equality_and_repr() -> None:
    a = Address("Oslo", "0150")
    assert a == Address(city="Oslo", zip="0150")
    assert a != Address(city="Oslo")
    assert a != {"city": "Oslo", "zip": "0150"}
    assert repr(a) == "Address(city='Oslo', zip='0150')"


def test_non_frozen_records_are_mutable_and_unhashable() -> None:
    a = Address("Oslo")
    a.city = "Bergen"
    assert a.city == "Bergen"
    with pytest.raises(TypeError):
        hash(a)


def test_frozen_records_hash_and_refuse_assignment() -> None:
    p = Point(1.0, 2.0)
    assert hash(p) == hash(Point(1.0, 2.0))
    assert {p, Point(1.0, 2.0), Point(2.0, 1.0)} == {Point(1.0, 2.0), Point(2.0, 1.0)}
    with pytest.raises(AttributeError, match="Point is frozen"):
        p.x = 3.0
    with pytest.raises(AttributeError, match="Point is frozen"):
        del p.y
    assert p.x == 1.0
    assert Point.from_data({"x": 1, "y": 2}) == p


def test_frozen_is_inherited_and_can_be_turned_off() -> None:
    class Point3(Point):
        z: float = 0.0

    class Loose(Point, frozen=False):
        pass

    with pytest.raises(AttributeError):
        Point3(1, 2, 3).z = 4.0
    loose = Loose(1, 2)
    loose.x = 5.0
    assert loose.x == 5.0


def test_subclass_fields_follow_the_parents() -> None:
    class Labeled(Address):
        label: str = ""

    item = Labeled("Oslo", None, "home")
    assert item.asdict() == {"city": "Oslo", "zip": None, "label": "home"}
    assert Labeled.city.model is Labeled


def test_post_init_runs_after_construction_and_from_data() -> None:
    class Span(StrictRecord):
        start: int
        end: int

        def __post_init__(self) -> None:
            if self.end < self.start:
                raise ValueError("end before start")

    assert Span(1, 2).end == 2
    with pytest.raises(ValueError, match="end before start"):
        Span(2, 1)
    with pytest.raises(ValueError, match="end before start"):
        Span.from_data({"start": 2, "end": 1})


# --------------------------------------------------------------------------- #
# from_data


def test_from_data_coerces_what_the_wire_loses() -> None:
    order = Order.from_data(
        {
            "account_id": "a",
            "amount": 3,
            "price": "12.50",
            "at": "2024-05-01T12:30:00+00:00",
            "tags": ["x", "y"],
            "address": {"city": "Oslo"},
            "items": {"home": {"city": "Bergen", "zip": "5003"}},
            "unknown": "ignored",
        }
    )
    assert order.price == Decimal("12.50")
    assert order.at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert order.address == Address("Oslo")
    assert order.items == {"home": Address("Bergen", "5003")}
    assert not hasattr(order, "unknown")


def test_from_data_numbers() -> None:
    assert Order.from_data({"account_id": "a", "amount": 1, "price": 0.1}).price == Decimal("0.1")
    assert Order.from_data({"account_id": "a", "amount": 1, "price": 7}).price == Decimal(7)
    # JSON may give 3.0 for an integer
    assert Order.from_data({"account_id": "a", "amount": 3.0}).amount == 3
    point = Point.from_data({"x": 1, "y": 2})
    assert type(point.x) is float
    with pytest.raises(ValidationError, match=r"Order\.amount: expected int, got 3\.5"):
        Order.from_data({"account_id": "a", "amount": 3.5})


def test_from_data_datetime_forms() -> None:
    at = Order.from_data({"account_id": "a", "amount": 1, "at": "2024-05-01T12:30:00Z"}).at
    assert at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    local = Order.from_data({"account_id": "a", "amount": 1, "at": "2024-05-01T12:30:00+02:00"})
    assert local.at is not None
    assert local.at.utcoffset() == timedelta(hours=2)
    with pytest.raises(ValidationError, match=r"Order\.at: expected datetime \(ISO-8601\)"):
        Order.from_data({"account_id": "a", "amount": 1, "at": "yesterday"})


def test_from_data_containers_from_lists() -> None:
    s = Shapes.from_data({"flags": ["a", "b", "a"], "coords": [1, 2], "pair": ["k", 1], "blob": "hi"})
    assert s.flags == {"a", "b"}
    assert s.coords == (1, 2)
    assert s.pair == ("k", 1)
    assert s.blob == b"hi"


def test_from_data_errors_name_the_nested_path() -> None:
    with pytest.raises(ValidationError) as info:
        Order.from_data({"account_id": "a", "amount": 1, "items": {"home": {"city": 5}}})
    assert str(info.value) == "Order.items['home'].city: expected str, got 5 (int)"
    with pytest.raises(ValidationError, match=r"Order\.address: missing required field 'city'"):
        Order.from_data({"account_id": "a", "amount": 1, "address": {"zip": "1"}})
    with pytest.raises(ValidationError, match=r"Order\.price: expected Decimal, got 'abc'"):
        Order.from_data({"account_id": "a", "amount": 1, "price": "abc"})
    with pytest.raises(ValidationError, match=r"Order: missing required field 'amount'"):
        Order.from_data({"account_id": "a"})


def test_from_data_refuses_non_mappings() -> None:
    with pytest.raises(ValidationError, match=r"Order: expected a mapping of Order fields"):
        Order.from_data(["a", 1])


def test_self_reference_and_forward_reference() -> None:
    tree = Tree.from_data({"name": "root", "children": [{"name": "leaf"}]})
    assert tree.children == [Tree("leaf")]
    dept = Dept.from_data({"boss": {"name": "Ada"}})
    assert dept.boss == Employee("Ada")
    assert Dept.boss.type is Employee


# --------------------------------------------------------------------------- #
# representation and codecs


def test_to_representation_is_plain_data() -> None:
    order = Order(
        account_id="a",
        amount=2,
        price=Decimal("9.99"),
        at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        tags=["x"],
        address=Address("Oslo"),
        items={"home": Address("Bergen")},
    )
    rep = order.to_representation()
    assert rep == {
        "account_id": "a",
        "amount": 2,
        "price": "9.99",
        "at": "2024-05-01T12:30:00+00:00",
        "tags": ["x"],
        "address": {"city": "Oslo", "zip": None},
        "items": {"home": {"city": "Bergen", "zip": None}},
    }
    # plain enough for the stdlib encoder without any hook
    assert json.loads(json.dumps(rep)) == rep
    assert Order.from_data(rep) == order


def test_sets_and_tuples_become_lists() -> None:
    rep = Shapes(flags={"a"}, coords=(1, 2), pair=("k", 3)).to_representation()
    assert rep["flags"] == ["a"]
    assert rep["coords"] == [1, 2]
    assert rep["pair"] == ["k", 3]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_dumps_and_loads_round_trip(serializer: str) -> None:
    tz = timezone(timedelta(hours=-5))
    order = Order(
        account_id="a",
        amount=2,
        price=Decimal("0.10"),
        at=datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=tz),
        tags=["x", "y"],
        address=Address("Oslo", "0150"),
        items={"home": Address("Bergen")},
    )
    data = order.dumps(serializer=serializer)
    assert isinstance(data, bytes)
    again = Order.loads(data, serializer=serializer)
    assert again == order
    assert again.price.as_tuple() == Decimal("0.10").as_tuple()  # precision is kept


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_round_trip_through_schema(serializer: str) -> None:
    schema = Schema(
        key_type=Address,
        value_type=Order,
        key_serializer=serializer,
        value_serializer=serializer,
    )
    key = Address("Oslo")
    value = Order(account_id="a", amount=1, items={"h": Address("Bergen")})
    raw_key, raw_value = schema.dumps_key(key), schema.dumps_value(value)
    assert raw_key is not None
    assert raw_value is not None
    assert schema.loads_key(raw_key) == key
    assert schema.loads_value(raw_value) == value


def test_json_dumps_is_compact() -> None:
    assert Address("Oslo").dumps() == b'{"city":"Oslo","zip":null}'


# --------------------------------------------------------------------------- #
# field descriptors


def test_class_attributes_are_field_descriptors() -> None:
    descriptor = Order.account_id
    assert isinstance(descriptor, FieldDescriptor)
    assert descriptor.field == "account_id"
    assert descriptor.type is str
    assert descriptor.model is Order
    assert descriptor.required
    assert Order.at.type == datetime | None
    assert not Order.price.required
    assert Order.price.default == Decimal("0")
    assert repr(descriptor) == "<FieldDescriptor Order.account_id: str>"


def test_field_descriptors_read_instances() -> None:
    order = Order(account_id="acc-1", amount=5)
    assert order.account_id == "acc-1"
    assert Order.account_id.getattr(order) == "acc-1"
    assert Order.amount(order) == 5
    keys = sorted(
        map(Order.account_id, [Order("b", 1), Order("a", 2)]),
    )
    assert keys == ["a", "b"]


def test_field_names_that_shadow_builtins() -> None:
    class Event(StrictRecord):
        # quoted: in a class body `list` is the field once it is assigned
        type: str
        list: "list[str]" = []
        dict: "dict[str, int]" = {}

    event = Event.from_data({"type": "click", "list": ["a"]})
    assert (event.type, event.list, event.dict) == ("click", ["a"], {})
    assert Event(type="x").list == []
    with pytest.raises(ValidationError, match=r"Event\.type: expected str"):
        Event(type=1)


def test_reserved_field_prefix_is_refused() -> None:
    with pytest.raises(TypeError, match="_st_"):

        class Sneaky(StrictRecord):
            _st_data: int
