"""Records: typed models declared with class annotations, and their field descriptors.

A :class:`Record` subclass is compiled once, when the class is created: every
annotated field gets a validator (used by ``__init__``) and a converter (used by
:meth:`Record.from_data`), and a specialised ``__init__``/``from_data``/
``to_representation`` is generated for the class so that decoding an event costs
a handful of type checks rather than a walk over the annotations.

Annotations that name a class defined later in the module (a forward reference)
are resolved the first time the class is used.
"""

from __future__ import annotations

import copy
import inspect
import linecache
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, TypeVar, dataclass_transform

from ._exceptions import DecodeError, EncodeError, ValidationError

__all__ = ["FieldDescriptor", "Record", "RecordOptions", "registered_record", "revive"]

_R = TypeVar("_R", bound="Record")


class _MissingType:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Any = _MissingType()


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Mismatch(Exception):
    """Raised by validators and converters; turned into a ValidationError at the top.

    ``path`` collects ``.field`` / ``[index]`` segments innermost first as the
    exception travels out of nested containers and records.
    """

    def __init__(
        self,
        expected: str,
        value: Any,
        *,
        missing: tuple[str, ...] = (),
        model: str = "",
    ) -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.missing = missing
        self.model = model
        self.path: list[str] = []

    def message(self, model_name: str) -> str:
        where = model_name + "".join(reversed(self.path))
        if self.missing:
            noun = "field" if len(self.missing) == 1 else "fields"
            names = ", ".join(repr(n) for n in self.missing)
            of = f" of {self.model}" if self.path else ""
            return f"{where}: missing required {noun} {names}{of}"
        return (
            f"{where}: expected {self.expected}, got {_short_repr(self.value)} ({type(self.value).__name__})"
        )

    def error(self, model: type) -> ValidationError:
        return ValidationError(self.message(model.__name__))


def _describe(tp: Any) -> str:
    if tp is type(None) or tp is None:
        return "None"
    if tp is Any:
        return "Any"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", repr(origin))
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_describe(args[0])}, ...]"
        return f"{name}[{', '.join(_describe(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp)


# --------------------------------------------------------------------------- #
# Type specs: per annotation, a strict validator, a lenient converter and a
# function to plain data. They raise _Mismatch; the caller adds the path.
# --------------------------------------------------------------------------- #

Convert = Callable[[Any], Any]


@dataclass(slots=True)
class _Spec:
    desc: str
    check: Convert  # strict: __init__ of validation=True records
    coerce: Convert  # converting, raising: from_data of validation=True / coerce=True records
    to_repr: Convert | None  # None: the value is already plain data
    exact: type | None = None  # type(v) is exact -> valid as is, in every mode
    optional: bool = False
    passthrough: bool = False  # Any: no check at all
    # converting, never raising (Faust's default): what cannot be converted is kept as given
    soft: Convert | None = None

    def __post_init__(self) -> None:
        if self.soft is None:
            self.soft = _softly(self.coerce)


def _softly(convert: Convert) -> Convert:
    def soft(value: Any) -> Any:
        try:
            return convert(value)
        except _Mismatch:
            return value

    return soft


def _identity(value: Any) -> Any:
    return value


def _scalar(tp: type, date_parser: Convert | None = None) -> _Spec:
    desc = tp.__name__

    def fail(value: Any) -> Any:
        raise _Mismatch(desc, value)

    if tp is str:

        def check_str(value: Any) -> Any:
            if isinstance(value, str):
                return value
            return fail(value)

        return _Spec(desc, check_str, check_str, None, exact=str)

    if tp is int:

        def check_int(value: Any) -> Any:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            return fail(value)

        def coerce_int(value: Any) -> Any:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return fail(value)

        return _Spec(desc, check_int, coerce_int, None, exact=int)

    if tp is float:

        def check_float(value: Any) -> Any:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            return fail(value)

        return _Spec(desc, check_float, check_float, None, exact=float)

    if tp is bool:

        def check_bool(value: Any) -> Any:
            if isinstance(value, bool):
                return value
            return fail(value)

        return _Spec(desc, check_bool, check_bool, None, exact=bool)

    if tp is bytes:

        def check_bytes(value: Any) -> Any:
            if isinstance(value, bytes):
                return value
            if isinstance(value, bytearray | memoryview):
                return bytes(value)
            return fail(value)

        def coerce_bytes(value: Any) -> Any:
            if isinstance(value, str):
                return value.encode("utf-8")
            return check_bytes(value)

        return _Spec(desc, check_bytes, coerce_bytes, None, exact=bytes)

    if tp is Decimal:

        def check_decimal(value: Any) -> Any:
            if isinstance(value, Decimal):
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                return Decimal(value)
            return fail(value)

        def coerce_decimal(value: Any) -> Any:
            if isinstance(value, str):
                try:
                    return Decimal(value)
                except InvalidOperation as exc:
                    raise _Mismatch(desc, value) from exc
            if isinstance(value, float):
                # repr gives the shortest text that round-trips: 0.1 -> Decimal("0.1")
                return Decimal(repr(value))
            return check_decimal(value)

        return _Spec(desc, check_decimal, coerce_decimal, str, exact=Decimal)

    if tp is datetime:

        def check_datetime(value: Any) -> Any:
            if isinstance(value, datetime):
                return value
            return fail(value)

        parse = date_parser or datetime.fromisoformat

        def coerce_datetime(value: Any) -> Any:
            if isinstance(value, str):
                try:
                    return parse(value)
                except ValueError as exc:
                    raise _Mismatch("datetime (ISO-8601)", value) from exc
            return check_datetime(value)

        return _Spec(desc, check_datetime, coerce_datetime, datetime.isoformat, exact=datetime)

    raise TypeError(f"unsupported field type {desc}")


def _record_spec(model: type[Record]) -> _Spec:
    desc = model.__name__

    def check(value: Any) -> Any:
        if isinstance(value, model):
            return value
        raise _Mismatch(desc, value)

    def coerce(value: Any) -> Any:
        if isinstance(value, model):
            return value
        if isinstance(value, Mapping):
            # looked up per call: the nested class may still be waiting for compilation
            return _namespace_class(value, model)._st_coerce(value)
        raise _Mismatch(desc, value)

    def soft(value: Any) -> Any:
        if isinstance(value, Mapping):
            return _namespace_class(value, model)._st_coerce(value)
        return value

    def to_repr(value: Any) -> Any:
        return value.to_representation()

    return _Spec(desc, check, coerce, to_repr, exact=model, soft=soft)


def _at(index: object) -> str:
    return f"[{index!r}]"


def _sequence_spec(kind: type, elem: _Spec, desc: str) -> _Spec:
    """list[X], set[X], frozenset[X] and tuple[X, ...]."""
    accepted: dict[type, tuple[type, ...]] = {
        list: (list,),
        tuple: (tuple,),
        set: (set, frozenset),
        frozenset: (set, frozenset),
    }
    strict_accepts = accepted[kind]
    lenient_accepts = (list, tuple, set, frozenset)
    ordered = kind in (list, tuple)

    def build(value: Any, convert: Convert) -> Any:
        try:
            return kind(convert(item) for item in value)
        except _Mismatch:
            # find the offending element again to name it; the slow path only
            for index, item in enumerate(value):
                try:
                    convert(item)
                except _Mismatch as exc:
                    exc.path.append(_at(index) if ordered else f"[<{_short_repr(item, 30)}>]")
                    raise
            raise

    def check(value: Any) -> Any:
        if not isinstance(value, strict_accepts):
            raise _Mismatch(desc, value)
        return build(value, elem.check)

    def coerce(value: Any) -> Any:
        if not isinstance(value, lenient_accepts):
            raise _Mismatch(desc, value)
        return build(value, elem.coerce)

    elem_soft = elem.soft
    assert elem_soft is not None

    def soft(value: Any) -> Any:
        if not isinstance(value, lenient_accepts):
            return value
        try:
            return kind(elem_soft(item) for item in value)
        except TypeError:  # unhashable items for a set
            return value

    item_repr = elem.to_repr
    if item_repr is None:
        to_repr: Convert = list
    else:
        convert_item = item_repr

        def to_repr(value: Any) -> Any:
            return [convert_item(item) for item in value]

    return _Spec(desc, check, coerce, to_repr, soft=soft)


def _fixed_tuple_spec(elems: list[_Spec], desc: str) -> _Spec:
    size = len(elems)

    def build(value: Any, converters: list[Convert]) -> Any:
        if len(value) != size:
            raise _Mismatch(desc, value)
        out = []
        for index, (convert, item) in enumerate(zip(converters, value, strict=True)):
            try:
                out.append(convert(item))
            except _Mismatch as exc:
                exc.path.append(_at(index))
                raise
        return tuple(out)

    checks = [e.check for e in elems]
    coercions = [e.coerce for e in elems]
    reprs = [e.to_repr or _identity for e in elems]

    def check(value: Any) -> Any:
        if not isinstance(value, tuple):
            raise _Mismatch(desc, value)
        return build(value, checks)

    def coerce(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _Mismatch(desc, value)
        return build(value, coercions)

    def to_repr(value: Any) -> Any:
        return [convert(item) for convert, item in zip(reprs, value, strict=True)]

    softs = [e.soft or _identity for e in elems]

    def soft(value: Any) -> Any:
        if not isinstance(value, list | tuple) or len(value) != size:
            return value
        return tuple(convert(item) for convert, item in zip(softs, value, strict=True))

    return _Spec(desc, check, coerce, to_repr, soft=soft)


def _dict_spec(key: _Spec, val: _Spec, desc: str) -> _Spec:
    def build(value: Any, convert_key: Convert, convert_value: Convert) -> Any:
        out = {}
        for k, v in value.items():
            try:
                k = convert_key(k)
            except _Mismatch as exc:
                exc.expected = f"{exc.expected} key"
                raise
            try:
                out[k] = convert_value(v)
            except _Mismatch as exc:
                exc.path.append(_at(k))
                raise
        return out

    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Mismatch(desc, value)
        return build(value, key.check, val.check)

    def coerce(value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _Mismatch(desc, value)
        return build(value, key.coerce, val.coerce)

    key_soft, val_soft = key.soft or _identity, val.soft or _identity

    def soft(value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        return {key_soft(k): val_soft(v) for k, v in value.items()}

    key_repr = key.to_repr or _identity
    val_repr = val.to_repr
    if val_repr is None and key.to_repr is None:
        to_repr: Convert = dict
    else:
        convert_value = val_repr or _identity

        def to_repr(value: Any) -> Any:
            return {key_repr(k): convert_value(v) for k, v in value.items()}

    return _Spec(desc, check, coerce, to_repr, soft=soft)


def _optional(inner: _Spec, desc: str) -> _Spec:
    inner_check, inner_coerce, inner_repr = inner.check, inner.coerce, inner.to_repr
    inner_desc = inner.desc

    def check(value: Any) -> Any:
        if value is None:
            return None
        try:
            return inner_check(value)
        except _Mismatch as exc:
            if not exc.path and exc.expected == inner_desc:
                exc.expected = desc
            raise

    def coerce(value: Any) -> Any:
        if value is None:
            return None
        try:
            return inner_coerce(value)
        except _Mismatch as exc:
            if not exc.path and exc.expected == inner_desc:
                exc.expected = desc
            raise

    to_repr: Convert | None = None
    if inner_repr is not None:
        convert = inner_repr

        def to_repr(value: Any) -> Any:
            return None if value is None else convert(value)

    inner_soft = inner.soft or _identity

    def soft(value: Any) -> Any:
        return None if value is None else inner_soft(value)

    return _Spec(desc, check, coerce, to_repr, exact=inner.exact, optional=True, soft=soft)


def _union(arms: list[_Spec], desc: str) -> _Spec:
    def first(value: Any, converters: list[Convert]) -> Any:
        for convert in converters:
            try:
                return convert(value)
            except _Mismatch:
                continue
        raise _Mismatch(desc, value)

    checks = [a.check for a in arms]
    coercions = [a.coerce for a in arms]

    def check(value: Any) -> Any:
        return first(value, checks)

    def coerce(value: Any) -> Any:
        return first(value, coercions)

    def soft(value: Any) -> Any:
        try:
            return first(value, coercions)
        except _Mismatch:
            return _revive(value)

    return _Spec(desc, check, coerce, _to_plain, soft=soft)


def _to_plain(value: Any) -> Any:
    """Plain data for a value whose declared type does not say what it is (unions)."""
    if isinstance(value, Record):
        return value.to_representation()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _tolerant(convert: Convert) -> Convert:
    def to_repr(value: Any) -> Any:
        try:
            return convert(value)
        except Exception:
            return _to_plain(value)

    return to_repr


_SCALARS = (str, int, float, bool, bytes, Decimal, datetime)


def _spec_for(tp: Any, date_parser: Convert | None = None, strict: bool = True) -> _Spec:
    """The spec of an annotation; ``strict=False`` (Faust's default) lets unknown types through."""
    try:
        return _spec_for_type(tp, date_parser)
    except TypeError:
        if strict:
            raise
        return _Spec(_describe(tp), _identity, _identity, _to_plain, passthrough=True, soft=_revive)


def _spec_for_type(tp: Any, date_parser: Convert | None) -> _Spec:
    desc = _describe(tp)

    def _spec_for(tp: Any) -> _Spec:
        return _spec_for_type(tp, date_parser)

    if tp is Any or tp is object:
        return _Spec(desc, _identity, _identity, _to_plain, passthrough=True, soft=_revive)
    if tp in _SCALARS:
        return _scalar(tp, date_parser)
    if isinstance(tp, type) and issubclass(tp, Record):
        return _record_spec(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        inner = _spec_for(arms[0]) if len(arms) == 1 else _union([_spec_for(a) for a in arms], desc)
        if len(arms) < len(args):
            return _optional(inner, desc)
        return inner
    if origin in (list, set, frozenset) and len(args) == 1:
        return _sequence_spec(origin, _spec_for(args[0]), desc)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence_spec(tuple, _spec_for(args[0]), desc)
    if origin is tuple and args:
        return _fixed_tuple_spec([_spec_for(a) for a in args], desc)
    if origin is dict and len(args) == 2:
        return _dict_spec(_spec_for(args[0]), _spec_for(args[1]), desc)
    if tp in (list, set, frozenset, tuple, dict):
        return _spec_for(
            {
                list: list[Any],
                set: set[Any],
                frozenset: frozenset[Any],
                tuple: tuple[Any, ...],
                dict: dict[Any, Any],
            }[tp]
        )
    raise TypeError(f"unsupported field type {desc}")


def _field_converter(name: str, convert: Convert) -> Convert:
    segment = f".{name}"

    def converter(value: Any) -> Any:
        try:
            return convert(value)
        except _Mismatch as exc:
            exc.path.append(segment)
            raise

    return converter


def _is_immutable(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bytes | Decimal | datetime):
        return True
    if isinstance(value, tuple | frozenset):
        return all(_is_immutable(v) for v in value)
    return isinstance(value, Record) and type(value)._st_frozen


# --------------------------------------------------------------------------- #
# Field descriptors
# --------------------------------------------------------------------------- #


class FieldDescriptor:
    """A field of a Record class, found as the class attribute of the same name.

    ``Order.account_id`` is a descriptor; ``order.account_id`` is the value.
    Pass descriptors where a key or timestamp is taken from events, as in
    ``stream.group_by(Order.account_id)``.

    Attributes:
        field: the field name.
        model: the Record class the descriptor belongs to.
        required: whether construction needs a value for it.
        default: the default value (only meaningful when ``required`` is false).
    """

    __slots__ = ("_type", "default", "field", "model", "required")

    def __init__(self, model: type[Record], field: str, default: Any = _MISSING) -> None:
        self.model = model
        self.field = field
        self.default = default
        self.required = default is _MISSING
        self._type: Any = _MISSING

    @property
    def type(self) -> Any:
        """The declared type of the field (a class or a typing form such as ``list[str]``)."""
        if self._type is _MISSING:
            self.model._st_ensure_compiled()
        return self._type

    def getattr(self, obj: Any) -> Any:
        """The value of this field in ``obj`` (an instance of :attr:`model`)."""
        return obj.__dict__[self.field]

    def __call__(self, obj: Any) -> Any:
        return obj.__dict__[self.field]

    @typing.overload
    def __get__(self, obj: None, owner: Any = None) -> FieldDescriptor: ...
    @typing.overload
    def __get__(self, obj: object, owner: Any = None) -> Any: ...
    def __get__(self, obj: object | None, owner: Any = None) -> Any:
        # Only reached on an instance when its __dict__ lacks the field
        # (instance attributes win over this non-data descriptor).
        if obj is None:
            return self
        raise AttributeError(f"{self.model.__name__!r} object has no value for {self.field!r}")

    def __repr__(self) -> str:
        kind = _describe(self._type) if self._type is not _MISSING else "?"
        return f"<FieldDescriptor {self.model.__name__}.{self.field}: {kind}>"


# --------------------------------------------------------------------------- #
# Code generation
# --------------------------------------------------------------------------- #


def _missing_error(model: type[Record], names: tuple[str, ...], values: tuple[Any, ...]) -> Any:
    missing = tuple(n for n, v in zip(names, values, strict=True) if v is _MISSING)
    raise _Mismatch("", None, missing=missing, model=model.__name__)


def _as_mapping(model: type[Record], data: Any) -> Any:
    if isinstance(data, Mapping):
        return data
    if isinstance(data, model):
        return data.__dict__
    raise _Mismatch(f"a mapping of {model.__name__} fields", data)


def _install(cls: type, **attributes: Any) -> None:
    """Set class attributes that the type checker would refuse as method assignments."""
    for name, value in attributes.items():
        setattr(cls, name, value)


def _frozen_setattr(self: Record, name: str, value: Any) -> None:
    raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")


def _frozen_delattr(self: Record, name: str) -> None:
    raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")


def _frozen_hash(self: Record) -> int:
    d = self.__dict__
    return hash((type(self), *(d[name] for name in self._st_fields)))


class _Generator:
    """Writes the source of one class's __init__, _st_coerce, from_data, to_representation."""

    def __init__(self, model: type[Record], specs: dict[str, _Spec]) -> None:
        self.model = model
        self.specs = specs
        self.ns: dict[str, Any] = {
            # field names become local variables, so every global the generated
            # code uses carries the reserved _st_ prefix (a field may be called `type`)
            "_st_MISSING": _MISSING,
            "_st_Mismatch": _Mismatch,
            "_st_type": type,
            "_st_list": list,
            "_st_dict": dict,
            "_st_set": set,
            "_st_missing_error": _missing_error,
            "_st_as_mapping": _as_mapping,
            "_st_model": model,
        }
        self.fields = list(specs)
        descriptors = model._st_descriptors
        self.required = [n for n in self.fields if descriptors[n].required]

    def _assign(self, i: int, name: str, mode: str, lines: list[str], indent: str) -> None:
        """Lines that validate/convert local ``name`` in place (default already applied)."""
        spec = self.specs[name]
        if spec.passthrough and mode == "check":
            return
        fn = f"_st_{mode}_{i}"
        if mode == "soft" or spec.passthrough:
            assert spec.soft is not None
            self.ns[fn] = spec.soft
        else:
            self.ns[fn] = _field_converter(name, spec.check if mode == "check" else spec.coerce)
        if spec.exact is not None:
            self.ns[f"_st_t_{i}"] = spec.exact
            test = f"_st_type({name}) is not _st_t_{i}"
            if spec.optional:
                test = f"{name} is not None and {test}"
            lines.append(f"{indent}if {test}: {name} = {fn}({name})")
        else:
            lines.append(f"{indent}{name} = {fn}({name})")

    def _body(self, mode: str, indent: str) -> list[str]:
        lines: list[str] = []
        descriptors = self.model._st_descriptors
        if self.required:
            test = " or ".join(f"{n} is _st_MISSING" for n in self.required)
            names = "".join(f"{n!r}, " for n in self.required)
            values = "".join(f"{n}, " for n in self.required)
            lines.append(f"{indent}if {test}:")
            lines.append(f"{indent}    _st_missing_error(_st_model, ({names}), ({values}))")
        for i, name in enumerate(self.fields):
            field = descriptors[name]
            if field.required:
                self._assign(i, name, mode, lines, indent)
                continue
            default = field.default
            if _is_immutable(default):
                self.ns[f"_st_d_{i}"] = default
                fill = f"_st_d_{i}"
            elif type(default) in (list, dict, set) and not default:
                fill = f"_st_{type(default).__name__}()"
            else:
                self.ns[f"_st_d_{i}"] = default
                self.ns["_st_deepcopy"] = copy.deepcopy
                fill = f"_st_deepcopy(_st_d_{i})"
            lines.append(f"{indent}if {name} is _st_MISSING: {name} = {fill}")
            sub: list[str] = []
            self._assign(i, name, mode, sub, indent + "    ")
            if sub:
                lines.append(f"{indent}else:")
                lines.extend(sub)
        return lines

    def _store(self, indent: str) -> list[str]:
        lines = [f"{indent}_st_d = _st_self.__dict__"]
        lines += [f"{indent}_st_d[{n!r}] = {n}" for n in self.fields]
        if hasattr(self.model, "__post_init__"):
            lines.append(f"{indent}_st_self.__post_init__()")
        return lines

    def source(self) -> str:
        options = self.model._st_options
        init_mode = "check" if options.validation else ("coerce" if options.coerce else "soft")
        data_mode = "coerce" if options.validation or options.coerce else "soft"
        # __faust: Faust's metadata key, accepted (and ignored) so Record(**decoded) works
        params = "".join(f", {n}=_st_MISSING" for n in self.fields) + ", __faust=None"
        out = [f"def __init__(_st_self{params}):", "    try:"]
        out += self._body(init_mode, "        ") or ["        pass"]
        out += [
            "    except _st_Mismatch as _st_exc:",
            "        raise _st_exc.error(_st_model) from _st_exc.__cause__",
        ]
        out += self._store("    ")

        gets = [f"{n} = _st_data.get({n!r}, _st_MISSING)" for n in self.fields]
        coerce_head = [
            "if _st_type(_st_data) is not _st_dict: _st_data = _st_as_mapping(_st_model, _st_data)",
            *gets,
        ]
        tail = ["_st_self = _st_new(_st_model)", *self._store(""), "return _st_self"]
        self.ns["_st_new"] = object.__new__

        out.append("def _st_coerce(_st_data):")
        out += ["    " + line for line in coerce_head]
        out += self._body(data_mode, "    ")
        out += ["    " + line for line in tail]

        out.append("def from_data(_st_cls, _st_data):")
        out.append("    try:")
        out += ["        " + line for line in coerce_head]
        out += self._body(data_mode, "        ")
        out += [
            "    except _st_Mismatch as _st_exc:",
            "        raise _st_exc.error(_st_model) from _st_exc.__cause__",
        ]
        out += ["    " + line for line in tail]

        items = []
        for i, name in enumerate(self.fields):
            spec = self.specs[name]
            if spec.to_repr is None:
                items.append(f"{name!r}: _st_d[{name!r}]")
            else:
                # values of non-validating records may be of any type: fall back
                # to converting by the value's own type
                to_repr = spec.to_repr if options.validation else _tolerant(spec.to_repr)
                self.ns[f"_st_r_{i}"] = to_repr
                items.append(f"{name!r}: _st_r_{i}(_st_d[{name!r}])")
        if options.include_metadata:
            self.ns["_st_metadata"] = {"ns": options.namespace}
            items.append("'__faust': _st_metadata")
        out.append("def to_representation(_st_self):")
        out.append("    _st_d = _st_self.__dict__")
        out.append("    return {" + ", ".join(items) + "}")
        return "\n".join(out) + "\n"

    def install(self) -> None:
        model = self.model
        source = self.source()
        filename = f"<streamtrio record {model.__module__}.{model.__qualname__} {id(model):x}>"
        # so that tracebacks through generated code show the generated lines
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), self.ns)
        for name in ("__init__", "to_representation"):
            fn = self.ns[name]
            fn.__qualname__ = f"{model.__qualname__}.{name}"
            fn.__module__ = model.__module__
            setattr(model, name, fn)
        model.__init__.__doc__ = f"Build a {model.__name__}; raises ValidationError."
        from_data = self.ns["from_data"]
        from_data.__qualname__ = f"{model.__qualname__}.from_data"
        from_data.__doc__ = Record.from_data.__doc__
        _install(
            model,
            from_data=classmethod(from_data),
            _st_coerce=staticmethod(self.ns["_st_coerce"]),
        )


# --------------------------------------------------------------------------- #
# Options and the namespace registry
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class RecordOptions:
    """The class options of a Record subclass (Faust's names; see ``docs/models.md``).

    Attributes:
        namespace: the name written in ``"__faust": {"ns": ...}`` and looked up
            when decoding (default ``module.QualName``).
        include_metadata: write the ``__faust`` namespace into every
            serialized record (Faust's default: on).
        validation: check field types in ``__init__`` and raise
            :class:`ValidationError` (off by default, as in Faust).
        coerce: convert values to the declared types in ``__init__`` too,
            raising when one cannot be converted.
        serializer: the codec used for this record where a topic names none.
        isodates, decimals, polymorphic_fields, allow_blessed_key: accepted for
            Faust; ISO strings and numbers are always converted into declared
            ``datetime``/``Decimal`` fields, a ``__faust`` namespace naming a
            subclass always builds that subclass.
        date_parser: parses the strings of ``datetime`` fields (default
            ``datetime.fromisoformat``).
    """

    namespace: str = ""
    include_metadata: bool = True
    validation: bool = False
    coerce: bool = False
    serializer: Any = None
    isodates: bool = False
    decimals: bool = False
    polymorphic_fields: bool = False
    allow_blessed_key: bool = False
    date_parser: Callable[[str], Any] | None = None
    abstract: bool = False


#: namespace -> Record class, for decoding ``__faust`` metadata
_REGISTRY: dict[str, type[Record]] = {}


def _default_namespace(cls: type) -> str:
    module = cls.__module__
    if module == "__main__":
        # as Faust does: the script's module name, so that `python app.py` and
        # `import app` write the same namespace
        import sys

        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file:
            from pathlib import Path

            module = Path(main_file).stem
    return f"{module}.{cls.__qualname__}"


def registered_record(namespace: str) -> type[Record] | None:
    """The Record class registered under a Faust namespace, if any."""
    return _REGISTRY.get(namespace)


def _namespace_class(data: Mapping[str, Any], declared: type[Record]) -> type[Record]:
    """The class ``data``'s ``__faust`` metadata names, if it is ``declared`` or a subclass."""
    meta = data.get("__faust")
    if type(meta) is dict:
        found = _REGISTRY.get(meta.get("ns", ""))
        if found is not None and issubclass(found, declared):
            return found
    return declared


def _revive(value: Any) -> Any:
    """Turn decoded data carrying ``__faust`` namespaces into their Record classes (deeply).

    Used where no type is declared (``value_type=None``, ``Any`` fields):
    Faust writes the namespace into every record it serializes. Containers
    are updated in place (they are freshly decoded data) and returned.
    """
    kind = type(value)
    if kind is dict:
        meta = value.get("__faust")
        if type(meta) is dict:
            found = _REGISTRY.get(meta.get("ns", ""))
            if found is not None:
                return found._st_coerce(value)
        for k, v in value.items():
            if type(v) in _CONTAINERS:
                new = _revive(v)
                if new is not v:
                    value[k] = new
        return value
    if kind is list:
        for i, v in enumerate(value):
            if type(v) in _CONTAINERS:
                new = _revive(v)
                if new is not v:
                    value[i] = new
    return value


_CONTAINERS = (dict, list)


def revive(value: Any) -> Any:
    """Public face of :func:`_revive` (codecs and tables use it).

    With no Record class registered there is nothing to revive: the value is
    returned without the walk (a third of a microsecond for a small dict,
    paid by every event of an untyped topic).
    """
    if not _REGISTRY:
        return value
    return _revive(value)


_OPTION_NAMES = frozenset(RecordOptions.__slots__)


# --------------------------------------------------------------------------- #
# Record
# --------------------------------------------------------------------------- #


@dataclass_transform(eq_default=True)
class Record:
    """Base class of typed models, declared with class annotations.

    ::

        class Order(Record):
            account_id: str
            amount: int
            tags: list[str] = []      # mutable defaults are copied per instance

        class Point(Record, frozen=True):   # hashable, refuses assignment
            x: float
            y: float

    Construction validates every field and raises :class:`ValidationError`
    naming the class, field, expected type and value. :meth:`from_data` builds
    an instance from decoded data (JSON/msgpack), coercing where the wire format
    loses type information.
    """

    _st_fields: ClassVar[tuple[str, ...]] = ()
    _st_descriptors: ClassVar[dict[str, FieldDescriptor]] = {}
    _st_frozen: ClassVar[bool] = False
    _st_compiled: ClassVar[bool] = True
    _st_options: ClassVar[RecordOptions] = RecordOptions()

    def __init_subclass__(cls, *, frozen: bool | None = None, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTION_NAMES}
        super().__init_subclass__(**kwargs)
        # options are inherited, except the namespace (each class has its own)
        # and abstract
        inherited = {
            name: getattr(cls._st_options, name)
            for name in _OPTION_NAMES
            if name not in ("namespace", "abstract")
        }
        inherited.update(options)
        inherited.setdefault("namespace", "")
        if not inherited["namespace"]:
            inherited["namespace"] = _default_namespace(cls)
        for flag in ("include_metadata", "validation", "coerce", "isodates", "decimals"):
            if inherited.get(flag) is None:
                inherited[flag] = getattr(RecordOptions, flag)
        cls._st_options = RecordOptions(**inherited)
        if not cls._st_options.abstract:
            _REGISTRY[cls._st_options.namespace] = cls
        if frozen is not None:
            cls._st_frozen = frozen
            if not frozen:
                _install(
                    cls,
                    __setattr__=object.__setattr__,
                    __delattr__=object.__delattr__,
                    __hash__=None,
                )
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name, annotation in inspect.get_annotations(klass).items():
                if _is_classvar(annotation) or name in names:
                    continue
                if name.startswith("_st_"):
                    raise TypeError(f"{cls.__name__}.{name}: field names may not start with _st_")
                names.append(name)
        descriptors: dict[str, FieldDescriptor] = {}
        for name in names:
            current = getattr(cls, name, _MISSING)
            default = current.default if isinstance(current, FieldDescriptor) else current
            descriptors[name] = FieldDescriptor(cls, name, default)
            setattr(cls, name, descriptors[name])
        cls._st_fields = tuple(names)
        cls._st_descriptors = descriptors
        if cls._st_frozen:
            _install(
                cls,
                __setattr__=_frozen_setattr,
                __delattr__=_frozen_delattr,
                __hash__=_frozen_hash,
            )
        # Until compiled, these entry points compile the class and retry.
        cls._st_compiled = False
        base = Record.__dict__
        for name in ("__init__", "from_data", "_st_coerce", "to_representation"):
            setattr(cls, name, base[name])
        try:
            cls._st_compile()
        except NameError:
            pass  # a forward reference: resolved on first use

    @classmethod
    def _st_compile(cls) -> None:
        try:
            # each class's annotations are evaluated in its own module; the
            # class's own name is added so that a record may refer to itself
            hints = typing.get_type_hints(cls, localns={cls.__name__: cls})
        except NameError as exc:
            raise NameError(f"cannot resolve the field types of {cls.__name__}: {exc}") from exc
        options = cls._st_options
        strict = options.validation
        specs: dict[str, _Spec] = {}
        for name in cls._st_fields:
            tp = hints[name]
            try:
                spec = _spec_for(tp, options.date_parser, strict=strict)
            except TypeError as exc:
                raise TypeError(f"{cls.__name__}.{name}: {exc}") from None
            field = cls._st_descriptors[name]
            if not field.required and field.default is None and not spec.optional and not spec.passthrough:
                # `at: datetime = None`: Faust reads a None default as Optional
                spec = _optional(spec, f"{spec.desc} | None")
            specs[name] = spec
            field._type = tp
        for name, spec in specs.items():
            field = cls._st_descriptors[name]
            if field.required:
                continue
            if not strict:
                assert spec.soft is not None
                field.default = spec.soft(field.default)
                continue
            try:
                field.default = spec.check(field.default)
            except _Mismatch:
                raise TypeError(
                    f"{cls.__name__}.{name}: default {_short_repr(field.default)} does not fit {spec.desc}"
                ) from None
        _Generator(cls, specs).install()
        cls._st_compiled = True

    @classmethod
    def _st_ensure_compiled(cls) -> None:
        if not cls.__dict__.get("_st_compiled", False):
            try:
                cls._st_compile()
            except NameError as exc:
                raise TypeError(str(exc)) from exc

    # The four entry points below are replaced by generated code per class.

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if cls is Record:
            raise TypeError("Record is a base class: declare a subclass with annotated fields")
        cls._st_ensure_compiled()
        cls.__init__(self, *args, **kwargs)

    @classmethod
    def from_data(cls: type[_R], data: Mapping[str, Any]) -> _R:
        """Build an instance from decoded data, coercing where the wire loses types.

        Nested mappings become nested Records, ISO-8601 strings become
        ``datetime``, numbers and strings become ``Decimal``, ints become floats
        and lists become sets or tuples where the field says so. Keys that are
        not fields are ignored.

        Raises:
            ValidationError: a field is missing or cannot be converted.
        """
        cls._st_ensure_compiled()
        return cls.from_data(data)

    @classmethod
    def _st_coerce(cls, data: Any) -> Any:
        cls._st_ensure_compiled()
        return cls._st_coerce(data)

    def to_representation(self) -> dict[str, Any]:
        """The record as plain data a JSON or msgpack codec can encode.

        Nested Records become dicts, ``datetime`` an ISO-8601 string,
        ``Decimal`` a string, sets and tuples lists.
        """
        cls = type(self)
        cls._st_ensure_compiled()
        return cls.to_representation(self)

    def asdict(self) -> dict[str, Any]:
        """The field values as a new dict (not converted, not copied deeply)."""
        d = self.__dict__
        return {name: d[name] for name in self._st_fields}

    def dumps(self, serializer: Any = None) -> bytes:
        """Encode the record with a codec (a registered name or a Codec).

        Raises:
            EncodeError: the codec cannot encode a field value.
            ConfigurationError: the codec is unknown.
        """
        from ._codecs import get_codec

        codec = get_codec(serializer or self._st_options.serializer or "json")
        try:
            return codec.dumps(self.to_representation())
        except Exception as exc:
            raise EncodeError(
                f"cannot encode {type(self).__name__} with codec {codec.name!r}: {exc}"
            ) from exc

    @classmethod
    def loads(
        cls: type[_R], data: bytes, serializer: Any = None, *, default_serializer: Any = None
    ) -> _R:
        """Decode ``data`` with a codec and build an instance with :meth:`from_data`.

        Raises:
            DecodeError: the codec cannot decode the bytes.
            ValidationError: the decoded data does not fit the record.
        """
        from ._codecs import get_codec

        codec = get_codec(serializer or cls._st_options.serializer or default_serializer or "json")
        try:
            obj = codec.loads(data)
        except Exception as exc:
            raise DecodeError(f"codec {codec.name!r} cannot decode {cls.__name__}: {exc}") from exc
        if isinstance(obj, Mapping):
            return _namespace_class(obj, cls).from_data(obj)  # type: ignore[return-value]
        return cls.from_data(obj)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        mine, theirs = self.__dict__, other.__dict__
        return all(mine[name] == theirs[name] for name in self._st_fields)

    def __repr__(self) -> str:
        d = self.__dict__
        body = ", ".join(f"{name}={d.get(name, _MISSING)!r}" for name in self._st_fields)
        return f"{type(self).__name__}({body})"


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or typing.get_origin(annotation) is ClassVar
