import json
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from streamtrio import _codecs
from streamtrio._codecs import Codec, Schema, get_codec, register_codec
from streamtrio._exceptions import ConfigurationError, DecodeError, EncodeError
from streamtrio._records import Record


# These tests pin streamtrio's strict mode: validating construction and no
# Faust metadata on the wire (tests/test_faust_records.py covers the defaults).
class StrictRecord(Record, validation=True, include_metadata=False, abstract=True):
    pass


class Account(StrictRecord):
    user: str
    amount: int
    opened: datetime | None = None


# --------------------------------------------------------------------------- #
# built-in codecs


def test_raw_codec() -> None:
    raw = get_codec("raw")
    assert raw.name == "raw"
    assert raw.dumps(b"\x00\xff") == b"\x00\xff"
    assert raw.dumps("blåbær") == "blåbær".encode()
    assert raw.dumps(42) == b"42"
    assert raw.loads(b"\x00\xff") == b"\x00\xff"
    with pytest.raises(TypeError, match="dict"):
        raw.dumps({"a": 1})
    with pytest.raises(TypeError, match="bool"):
        raw.dumps(True)


def test_json_codec_is_compact_utf8_and_knows_our_types() -> None:
    codec = get_codec("json")
    data = codec.dumps(
        {
            "name": "blåbær",
            "when": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
            "price": Decimal("1.10"),
            "tags": {"only"},
            "pair": (1, 2),
            "account": Account("u", 3),
        }
    )
    assert (
        data
        == (
            '{"name":"blåbær","when":"2024-05-01T12:00:00+00:00","price":"1.10",'
            '"tags":["only"],"pair":[1,2],"account":{"user":"u","amount":3,"opened":null}}'
        ).encode()
    )
    assert codec.loads(data)["account"] == {"user": "u", "amount": 3, "opened": None}
    with pytest.raises(TypeError, match="object"):
        codec.dumps(object())


@pytest.mark.parametrize(
    "data",
    [b'{"a":1}', b' {"a":1}\n', b'\xef\xbb\xbf{"a":1}', '{"a":1}'.encode("utf-16")],
)
def test_json_codec_loads_what_json_loads_accepts(data: bytes) -> None:
    assert get_codec("json").loads(data) == {"a": 1}


@pytest.mark.parametrize(
    "data",
    [
        b"[123456789012345678901234567890, -9223372036854775809, 18446744073709551616]",
        b'{"n": NaN, "i": Infinity, "big": 1e400}',
        b'"\\ud800"',
        b'{"a": 1, "a": 2, "f": [0.1, -0.0, 1E5, 1.7976931348623157e308]}',
        b'"\\ud83d\\ude00 \\u0000 bl\xc3\xa5"',
    ],
)
def test_json_codec_decodes_as_the_standard_library(data: bytes) -> None:
    # Integers of any size stay exact (a decoder that turns big ones into floats
    # would change them silently); what the fast decoder refuses is still accepted.
    decoded = get_codec("json").loads(data)
    assert repr(decoded) == repr(json.loads(data))


@pytest.mark.parametrize("data", [b'{"a":1}x', b"", b"{", b"\xff"])
def test_json_codec_refuses_malformed_input(data: bytes) -> None:
    with pytest.raises(ValueError):
        get_codec("json").loads(data)


def test_msgpack_codec_keeps_bytes_and_knows_our_types() -> None:
    codec = get_codec("msgpack")
    value = {"blob": b"\x00\xff", "text": "é", "price": Decimal("2.5"), "account": Account("u", 1)}
    data = codec.dumps(value)
    assert msgpack.unpackb(data, raw=False)["blob"] == b"\x00\xff"
    assert codec.loads(data) == {
        "blob": b"\x00\xff",
        "text": "é",
        "price": "2.5",
        "account": {"user": "u", "amount": 1, "opened": None},
    }


# --------------------------------------------------------------------------- #
# registry


def test_unknown_codec_names_it_and_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_codec("yaml")
    message = str(info.value)
    assert "'yaml'" in message
    for name in ("json", "msgpack", "raw"):
        assert name in message
    with pytest.raises(ConfigurationError, match="unknown codec"):
        Schema(value_serializer="yaml")


class Upper(Codec):
    name = "upper"

    def dumps(self, obj: Any) -> bytes:
        return str(obj).upper().encode()

    def loads(self, data: bytes) -> Any:
        return data.decode().lower()


@pytest.fixture
def upper_codec() -> Iterator[None]:
    register_codec("upper", Upper)
    yield
    _codecs._CODECS.pop("upper")


@pytest.mark.usefixtures("upper_codec")
def test_registered_codec_is_found_by_name_and_used_by_schema() -> None:
    assert isinstance(get_codec("upper"), Upper)
    codec = get_codec("upper")
    assert get_codec(codec) is codec
    schema = Schema(value_type=str, value_serializer="upper")
    assert schema.dumps_value("hello") == b"HELLO"
    assert schema.loads_value(b"HELLO") == "hello"


def test_register_codec_refuses_non_codecs() -> None:
    with pytest.raises(ConfigurationError, match="expected a Codec"):
        register_codec("bad", object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Schema round trips


@pytest.mark.parametrize(
    ("tp", "serializer", "value", "wire"),
    [
        (bytes, "raw", b"\x01\x02", b"\x01\x02"),
        (str, "raw", "blåbær", "blåbær".encode()),
        (int, "raw", 42, b"42"),
        (float, "raw", 2.5, b"2.5"),
        (None, "raw", b"as-is", b"as-is"),
        (str, "json", "k1", b'"k1"'),
        (int, "json", 7, b"7"),
        (float, "json", 0.5, b"0.5"),
        (None, "json", {"a": [1, 2]}, b'{"a":[1,2]}'),
        (str, "msgpack", "k1", msgpack.packb("k1")),
        (int, "msgpack", 7, msgpack.packb(7)),
        (bytes, "msgpack", b"\x00", msgpack.packb(b"\x00", use_bin_type=True)),
        (Account, "json", Account("u", 1), b'{"user":"u","amount":1,"opened":null}'),
    ],
)
def test_schema_round_trip(tp: Any, serializer: str, value: Any, wire: bytes) -> None:
    schema = Schema(key_type=tp, value_type=tp, key_serializer=serializer, value_serializer=serializer)
    assert schema.dumps_key(value) == wire
    assert schema.dumps_value(value) == wire
    key = schema.loads_key(wire)
    assert key == value
    assert type(key) is type(value)
    assert schema.loads_value(wire) == value


def test_schema_record_round_trip_through_msgpack_keeps_types() -> None:
    schema = Schema(value_type=Account, value_serializer="msgpack")
    account = Account("u", 5, opened=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    data = schema.dumps_value(account)
    assert data is not None
    again = schema.loads_value(data)
    assert again == account
    assert isinstance(again.opened, datetime)


def test_schema_coerces_decoded_values_to_the_declared_type() -> None:
    # a JSON string key declared as bytes, a raw key declared as int
    assert Schema(key_type=bytes, key_serializer="json").loads_key(b'"k"') == b"k"
    assert Schema(key_type=int).loads_key(b"-12") == -12
    assert Schema(value_type=float).loads_value(b"3") == 3.0
    assert type(Schema(value_type=float).loads_value(b"3")) is float


def test_schema_defaults_are_raw_keys_and_json_values() -> None:
    schema = Schema()
    assert schema.key_codec.name == "raw"
    assert schema.value_codec.name == "json"
    assert schema.loads_key(b"k") == b"k"
    assert schema.loads_value(b'{"a":1}') == {"a": 1}


def test_none_is_a_tombstone_both_ways() -> None:
    schema = Schema(key_type=str, value_type=Account)
    assert schema.loads_key(None) is None
    assert schema.loads_value(None) is None
    assert schema.dumps_key(None) is None
    assert schema.dumps_value(None) is None


# --------------------------------------------------------------------------- #
# Schema errors


def test_malformed_value_names_topic_partition_offset_and_codec() -> None:
    schema = Schema(value_type=Account)
    with pytest.raises(DecodeError) as info:
        schema.loads_value(b"{not json", topic="orders", partition=3, offset=42)
    err = info.value
    message = str(err)
    assert "topic='orders'" in message
    assert "partition=3" in message
    assert "offset=42" in message
    assert "codec='json'" in message
    assert "cannot decode value" in message
    assert (err.topic, err.partition, err.offset, err.field) == ("orders", 3, 42, "value")
    assert isinstance(err.__cause__, json.JSONDecodeError)


def test_value_that_does_not_fit_the_record_names_the_field() -> None:
    schema = Schema(value_type=Account)
    with pytest.raises(DecodeError) as info:
        schema.loads_value(b'{"user":"u","amount":"many"}', topic="t", partition=0, offset=9)
    message = str(info.value)
    assert "Account.amount: expected int, got 'many'" in message
    assert "offset=9" in message


def test_bad_key_is_reported_as_the_key() -> None:
    schema = Schema(key_type=str)
    with pytest.raises(DecodeError) as info:
        schema.loads_key(b"\xff\xfe", topic="t", partition=1, offset=2)
    assert info.value.field == "key"
    assert "cannot decode key" in str(info.value)
    assert "codec='raw'" in str(info.value)
    with pytest.raises(DecodeError, match="key_type=int"):
        Schema(key_type=int).loads_key(b"abc", topic="t", partition=1, offset=3)


def test_wrong_json_type_for_declared_str() -> None:
    with pytest.raises(DecodeError, match="expected str, got int"):
        Schema(value_type=str).loads_value(b"5", topic="t", partition=0, offset=0)


def test_unencodable_value_names_field_codec_and_type() -> None:
    with pytest.raises(EncodeError) as info:
        Schema().dumps_key({"a": 1})
    message = str(info.value)
    assert "key" in message
    assert "'raw'" in message
    assert "dict" in message

    class Opaque:
        pass

    with pytest.raises(EncodeError, match=r"value of type Opaque with codec 'json'"):
        Schema().dumps_value(Opaque())
    with pytest.raises(EncodeError, match=r"value of type Opaque with codec 'msgpack'"):
        Schema(value_serializer="msgpack").dumps_value(Opaque())


def test_record_type_with_raw_codec_is_refused_up_front() -> None:
    with pytest.raises(ConfigurationError, match="key_serializer='json'"):
        Schema(key_type=Account, key_serializer="raw")


def test_record_key_without_a_serializer_is_json() -> None:
    schema = Schema(key_type=Account)
    assert schema.key_codec.name == "json"
    assert schema.loads_key(schema.dumps_key(Account("u", 1))) == Account("u", 1)


def test_unsupported_declared_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="value_type"):
        Schema(value_type=dict)


def test_record_dumps_reports_unknown_serializer() -> None:
    with pytest.raises(ConfigurationError, match="unknown codec 'nope'"):
        Account("u", 1).dumps(serializer="nope")
    with pytest.raises(DecodeError, match="codec 'json' cannot decode Account"):
        Account.loads(b"\x00")


def in_four_threads_switching_often(target: Any) -> None:
    """Run ``target`` in four threads at once, the GIL handed over every microsecond."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=target) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)


def test_msgpack_codec_from_many_threads_at_once() -> None:
    # Packers are reused; the default hook (Decimal here) runs Python code
    # mid-pack, where another thread may take over and pack with the codec too.
    codec = get_codec("msgpack")
    values = [[i, Decimal(i), f"k{i}", [Decimal(-i)] * 3] for i in range(300)]
    expected = [msgpack.packb([i, str(i), f"k{i}", [str(-i)] * 3]) for i in range(300)]
    wrong: list[int] = []

    def pack_all() -> None:
        for _ in range(20):
            for i, value in enumerate(values):
                if codec.dumps(value) != expected[i]:
                    wrong.append(i)

    in_four_threads_switching_often(pack_all)
    assert wrong == []
    with pytest.raises(TypeError):
        codec.dumps(object())
    assert codec.dumps([1, "a"]) == msgpack.packb([1, "a"])  # nothing left over from the failure


def test_msgpack_plain_values_from_many_threads_at_once_pack_as_dumps_does() -> None:
    # The table's hot path packs int, float, str, bytes and bool with one shared
    # Packer: safe only because packing them runs no Python code.
    codec = get_codec("msgpack")
    assert isinstance(codec, _codecs.MsgpackCodec)
    plain: list[Any] = [
        0,
        -1,
        127,
        128,
        -33,
        2**63,
        -(2**63),
        1.5,
        "",
        "k",
        "é" * 40,
        b"\x00" * 300,
        True,
        False,
    ]
    assert [codec.dumps_plain(v) for v in plain] == [codec.dumps(v) for v in plain]
    values = [f"key-{i}" if i % 3 else i * 1_000_003 for i in range(500)]
    expected = [msgpack.packb(v) for v in values]
    wrong: list[int] = []

    def pack_all() -> None:
        for _ in range(20):
            for i, value in enumerate(values):
                if codec.dumps_plain(value) != expected[i]:
                    wrong.append(i)

    in_four_threads_switching_often(pack_all)
    assert wrong == []
    with pytest.raises(OverflowError):
        codec.dumps_plain(2**70)
    assert codec.dumps_plain(7) == msgpack.packb(7)  # nothing left over from the failure
