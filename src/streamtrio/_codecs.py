"""Codecs (raw, json, msgpack), their registry, and Schema: bytes <-> typed keys and values.

A :class:`Schema` pairs a codec with a declared type for the key and for the
value of a topic. Its four methods run once per event, so everything that can
be decided ahead of time (which codec, which coercion) is decided in
``Schema.__init__`` and stored as one function per field.
"""

from __future__ import annotations

import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any, TypeAlias

from ._exceptions import ConfigurationError, DecodeError, EncodeError
from ._records import _REGISTRY, Record, _namespace_class, _revive, revive

__all__ = [
    "Codec",
    "CodecArg",
    "JSONCodec",
    "MsgpackCodec",
    "RawCodec",
    "Schema",
    "default_serializer",
    "get_codec",
    "register_codec",
]


class Codec(ABC):
    """Turns Python objects into bytes and back.

    Subclass it, set :attr:`name`, and register an instance with
    :func:`register_codec` to make it available by name to topics and records.
    """

    name: str = ""

    @abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raise ``TypeError`` or ``ValueError`` when it cannot."""

    @abstractmethod
    def loads(self, data: bytes) -> Any:
        """Decode ``data``; raise ``ValueError`` when it is malformed."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _plain(obj: Any) -> Any:
    """The ``default`` hook shared by the JSON and msgpack codecs."""
    if isinstance(obj, Record):
        return obj.to_representation()
    if isinstance(obj, date):  # datetime is a date
        return obj.isoformat()
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not serializable")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        # JSON has no bytes; UTF-8 text survives the round trip, binary data does not
        return bytes(obj).decode("utf-8")
    return _plain(obj)


class RawCodec(Codec):
    """Bytes as they are. ``str`` is encoded as UTF-8; ``int``/``float`` as their text."""

    name = "raw"

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, str):
            return obj.encode("utf-8")
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        if isinstance(obj, int | float) and not isinstance(obj, bool):
            return str(obj).encode("ascii")
        raise TypeError(f"raw codec encodes bytes, str, int or float, not {type(obj).__name__}")

    def loads(self, data: bytes) -> Any:
        return data


class JSONCodec(Codec):
    """Compact UTF-8 JSON: encoded by the standard library, decoded by msgspec.

    msgspec's decoder takes about a fifth of the standard library's time for
    a small object and gives the same values (integers of any size exactly,
    last of duplicate keys); what it refuses (NaN, Infinity, lone surrogates,
    a byte order mark...) goes to the standard library, which accepts it as
    before or raises the error it always raised. orjson was not chosen: it
    turns integers beyond 64 bits into floats without an error
    (docs/dependencies.md).
    """

    name = "json"

    def __init__(self) -> None:
        self._encode = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, default=_json_default
        ).encode
        self._raw_decode = json.JSONDecoder().raw_decode
        self._decode: Callable[[bytes], Any] = self._first_decode

    def _first_decode(self, data: bytes) -> Any:
        # msgspec is imported at the first decode: an app that decodes no JSON does not load it.
        import msgspec

        self._decode = msgspec.json.Decoder().decode
        return self._decode(data)

    def dumps(self, obj: Any) -> bytes:
        return self._encode(obj).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        try:
            return self._decode(data)
        except Exception:
            return self._loads_stdlib(data)

    def _loads_stdlib(self, data: bytes) -> Any:
        # json.loads(bytes) sniffs the encoding and strips whitespace with regexes,
        # which costs more than the parse for small messages; take the direct
        # path for the common case and let json.loads handle (or report) the rest.
        try:
            text = data.decode("utf-8")
            obj, end = self._raw_decode(text)
        except ValueError:  # UnicodeDecodeError, JSONDecodeError (leading space, bad JSON)
            return json.loads(data)
        if end != len(text):
            return json.loads(data)
        return obj


class MsgpackCodec(Codec):
    """msgpack with distinct str and bin types.

    ``msgpack.packb`` builds a new Packer for every call, which costs more
    than packing a small key or value; Packers are kept for reuse instead. A
    Packer is not safe to share (its ``default`` hook runs Python code
    mid-pack, where another thread, or a nested call from the hook, may use
    the codec), so each call takes one off the free list (atomic under the
    GIL) and puts it back when done: concurrent calls never share one.
    """

    name = "msgpack"

    def __init__(self) -> None:
        self._free: list[Any] = []  # msgpack.Packer
        self._shared: Callable[[Any], bytes] | None = None  # a Packer's pack, no default hook

    def dumps_plain(self, obj: Any) -> bytes:
        """:meth:`dumps` of an ``int``, ``float``, ``str``, ``bytes`` or ``bool`` (exactly
        these types; the table's hot path), with one Packer shared by every caller.

        Packing them runs no Python code and never releases the GIL, so no other
        thread can use the Packer meanwhile (a failure, such as an int too big,
        empties its buffer before raising). Without a GIL (free-threaded Python)
        each call takes its own Packer, as :meth:`dumps` does.
        """
        shared = self._shared
        if shared is None:
            if not getattr(sys, "_is_gil_enabled", lambda: True)():
                return self.dumps(obj)
            import msgpack

            shared = self._shared = msgpack.Packer(use_bin_type=True).pack
        return shared(obj)

    # msgpack is imported when first used: an app that never uses it does not load it.
    def dumps(self, obj: Any) -> bytes:
        free = self._free
        try:
            packer = free.pop()
        except IndexError:
            import msgpack

            packer = msgpack.Packer(use_bin_type=True, default=_plain)
        packed: bytes = packer.pack(obj)  # its buffer is emptied even when it raises
        free.append(packer)
        return packed

    def loads(self, data: bytes) -> Any:
        import msgpack

        return msgpack.unpackb(data, raw=False)


_CODECS: dict[str, Codec] = {}

#: A codec, or the name it is registered under.
CodecArg: TypeAlias = "Codec | str"


def register_codec(name: str, codec: Codec | type[Codec]) -> None:
    """Make ``codec`` available under ``name`` (replacing any codec of that name).

    Raises:
        ConfigurationError: ``codec`` is not a Codec.
    """
    if isinstance(codec, type) and issubclass(codec, Codec):
        codec = codec()
    if not isinstance(codec, Codec):
        raise ConfigurationError(f"register_codec({name!r}): expected a Codec, got {codec!r}")
    _CODECS[name] = codec


def get_codec(name_or_codec: CodecArg) -> Codec:
    """The codec registered under a name, or the codec itself.

    Raises:
        ConfigurationError: no codec has that name (the message lists those that do).
    """
    if isinstance(name_or_codec, Codec):
        return name_or_codec
    try:
        return _CODECS[name_or_codec]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_CODECS))
        raise ConfigurationError(f"unknown codec {name_or_codec!r}; registered codecs: {known}") from None


for _codec in (RawCodec(), JSONCodec(), MsgpackCodec()):
    register_codec(_codec.name, _codec)


# --------------------------------------------------------------------------- #
# Schema
# --------------------------------------------------------------------------- #

_Loader = Callable[[bytes], Any]
_SIMPLE_TYPES = (bytes, str, int, float)


def _type_name(tp: Any) -> str:
    return "None" if tp is None else getattr(tp, "__name__", repr(tp))


def _to_str(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).decode("utf-8")
    raise TypeError(f"expected str, got {type(obj).__name__} {obj!r}")


def _to_bytes(obj: Any) -> bytes:
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    raise TypeError(f"expected bytes, got {type(obj).__name__} {obj!r}")


def _to_int(obj: Any) -> int:
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, str | bytes):
        return int(obj)
    raise TypeError(f"expected int, got {type(obj).__name__} {obj!r}")


def _to_float(obj: Any) -> float:
    if isinstance(obj, int | float | str | bytes) and not isinstance(obj, bool):
        return float(obj)
    raise TypeError(f"expected float, got {type(obj).__name__} {obj!r}")


_COERCE: dict[type, Callable[[Any], Any]] = {
    str: _to_str,
    bytes: _to_bytes,
    int: _to_int,
    float: _to_float,
}


def _make_loader(codec: Codec, tp: Any) -> _Loader:
    decode = codec.loads
    if tp is None:
        if type(codec) is RawCodec:
            return decode

        def load_any(data: bytes) -> Any:
            # Records written with Faust's "__faust" namespace come back as their classes
            return revive(decode(data))

        return load_any
    if isinstance(tp, type) and issubclass(tp, Record):
        record: type[Record] = tp
        from_data = tp.from_data

        def load_record(data: bytes) -> Any:
            obj = decode(data)
            if type(obj) is dict and "__faust" in obj:
                # a subclass named by the namespace (Faust's polymorphism)
                return _namespace_class(obj, record).from_data(obj)
            return from_data(obj)

        return load_record
    if type(codec) is RawCodec:
        # raw hands the bytes through: skip the codec call on the hot path
        if tp is bytes:
            return bytes
        if tp is str:
            return _raw_to_str
    coerce = _COERCE[tp]

    def load(data: bytes) -> Any:
        return coerce(decode(data))

    return load


def _raw_to_str(data: bytes) -> str:
    return data.decode("utf-8")


def _make_fast_loader(codec: Codec, tp: Any, full: _Loader) -> _Loader:
    """A loader for the consuming hot path, equal to ``full`` on every input it
    accepts but allowed to refuse more (the caller then decodes with ``full``, which
    accepts or raises the full error). Fewer Python calls per message than ``full``
    where that pays: a str key of the raw codec is one C call; an untyped JSON value
    is msgspec's decoder and the Record check, one Python call instead of three.
    """
    if type(codec) is RawCodec and tp is str:
        return bytes.decode  # refuses a bytearray or memoryview: full decodes those
    if type(codec) is JSONCodec and tp is None:
        json_codec = codec
        registry = _REGISTRY  # filled in place as Record classes are defined

        def load_json(data: bytes) -> Any:
            # msgspec only (after the first call imports it): what it refuses goes to full
            obj = json_codec._decode(data)
            return _revive(obj) if registry else obj

        return load_json
    return full


def _check_type(tp: Any, role: str) -> None:
    if tp is None or tp in _SIMPLE_TYPES:
        return
    if isinstance(tp, type) and issubclass(tp, Record):
        return
    raise ConfigurationError(
        f"{role}: expected None, bytes, str, int, float or a Record subclass, got {tp!r}"
    )


def default_serializer(tp: Any, configured: CodecArg) -> CodecArg:
    """The codec for a key or value of type ``tp`` when the topic names none.

    A Record class's own ``serializer=`` option wins over the app's default;
    a Record is never given the ``raw`` codec by default (it cannot carry
    one): JSON is used instead, as Faust does.
    """
    if isinstance(tp, type) and issubclass(tp, Record):
        own = tp._st_options.serializer
        if own:
            return own  # type: ignore[no-any-return]
        if configured == "raw" or isinstance(configured, RawCodec):
            return "json"
    return configured


class Schema:
    """How a topic's keys and values turn into bytes and back.

    Args:
        key_type: the declared key type: ``None`` (whatever the codec gives),
            ``bytes``, ``str``, ``int``, ``float`` or a :class:`Record` subclass.
        value_type: the same for values.
        key_serializer: codec name or :class:`Codec` for keys (default ``"raw"``,
            or the Record's own serializer / ``"json"`` for a Record key).
        value_serializer: codec name or :class:`Codec` for values (default
            ``"json"``, or the Record's own serializer).

    Raises:
        ConfigurationError: a codec is unknown, a type is unsupported, or a
            Record type is paired with the ``raw`` codec (which cannot carry it).
    """

    __slots__ = (
        "_dump_key",
        "_dump_key_plain",
        "_dump_value",
        "_dump_value_plain",
        "_fast_load_key",
        "_fast_load_value",
        "_load_key",
        "_load_value",
        "key_codec",
        "key_serializer",
        "key_type",
        "value_codec",
        "value_serializer",
        "value_type",
    )

    def __init__(
        self,
        *,
        key_type: Any = None,
        value_type: Any = None,
        key_serializer: CodecArg | None = None,
        value_serializer: CodecArg | None = None,
    ) -> None:
        _check_type(key_type, "key_type")
        _check_type(value_type, "value_type")
        #: the serializers as given (None: the default for the type)
        self.key_serializer = key_serializer
        self.value_serializer = value_serializer
        if key_serializer is None:
            key_serializer = default_serializer(key_type, "raw")
        if value_serializer is None:
            value_serializer = default_serializer(value_type, "json")
        self.key_type = key_type
        self.value_type = value_type
        self.key_codec = get_codec(key_serializer)
        self.value_codec = get_codec(value_serializer)
        for tp, codec, role in (
            (key_type, self.key_codec, "key"),
            (value_type, self.value_codec, "value"),
        ):
            if type(codec) is RawCodec and isinstance(tp, type) and issubclass(tp, Record):
                raise ConfigurationError(
                    f"{role}_type={tp.__name__} needs a structured codec, but the {role} "
                    f"codec is 'raw': pass {role}_serializer='json' or 'msgpack'"
                )
        self._load_key = _make_loader(self.key_codec, key_type)
        self._load_value = _make_loader(self.value_codec, value_type)
        #: the consuming hot path's loaders (see _make_fast_loader): may refuse what
        #: _load_key and _load_value accept, never give a different value
        self._fast_load_key = _make_fast_loader(self.key_codec, key_type, self._load_key)
        self._fast_load_value = _make_fast_loader(self.value_codec, value_type, self._load_value)
        self._dump_key = self.key_codec.dumps
        self._dump_value = self.value_codec.dumps
        #: the codecs' encoders for exactly int, float, str, bytes and bool
        self._dump_key_plain: Callable[[Any], bytes] = getattr(self.key_codec, "dumps_plain", self._dump_key)
        self._dump_value_plain: Callable[[Any], bytes] = getattr(
            self.value_codec, "dumps_plain", self._dump_value
        )

    def loads_key(
        self,
        data: bytes | None,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Any:
        """Decode a key; ``None`` stays ``None``.

        Raises:
            DecodeError: the bytes cannot be decoded into ``key_type``; the
                message names the topic, partition, offset and codec.
        """
        if data is None:
            return None
        try:
            return self._load_key(data)
        except Exception as exc:
            raise self._decode_error(exc, "key", topic, partition, offset) from exc

    def loads_value(
        self,
        data: bytes | None,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Any:
        """Decode a value; ``None`` (a tombstone) stays ``None``.

        Raises:
            DecodeError: the bytes cannot be decoded into ``value_type``; the
                message names the topic, partition, offset and codec.
        """
        if data is None:
            return None
        try:
            return self._load_value(data)
        except Exception as exc:
            raise self._decode_error(exc, "value", topic, partition, offset) from exc

    def dumps_key(self, obj: Any) -> bytes | None:
        """Encode a key; ``None`` stays ``None``.

        Raises:
            EncodeError: the key codec cannot encode ``obj``.
        """
        if obj is None:
            return None
        data = obj.to_representation() if isinstance(obj, Record) else obj
        try:
            return self._dump_key(data)
        except Exception as exc:
            raise self._encode_error(exc, "key", obj) from exc

    def dumps_value(self, obj: Any) -> bytes | None:
        """Encode a value; ``None`` (a tombstone) stays ``None``.

        Raises:
            EncodeError: the value codec cannot encode ``obj``.
        """
        if obj is None:
            return None
        data = obj.to_representation() if isinstance(obj, Record) else obj
        try:
            return self._dump_value(data)
        except Exception as exc:
            raise self._encode_error(exc, "value", obj) from exc

    def _decode_error(
        self,
        exc: Exception,
        field: str,
        topic: str | None,
        partition: int | None,
        offset: int | None,
    ) -> DecodeError:
        codec = self.key_codec if field == "key" else self.value_codec
        tp = self.key_type if field == "key" else self.value_type
        reason = f"{type(exc).__name__}: {exc} ({field}_type={_type_name(tp)}, codec={codec.name!r})"
        return DecodeError(reason, topic=topic, partition=partition, offset=offset, field=field)

    def _encode_error(self, exc: Exception, field: str, obj: Any) -> EncodeError:
        codec = self.key_codec if field == "key" else self.value_codec
        return EncodeError(
            f"cannot encode {field} of type {type(obj).__name__} with codec {codec.name!r}: {exc}"
        )

    def __repr__(self) -> str:
        return (
            f"Schema(key_type={_type_name(self.key_type)}, "
            f"value_type={_type_name(self.value_type)}, "
            f"key_serializer={self.key_codec.name!r}, "
            f"value_serializer={self.value_codec.name!r})"
        )
