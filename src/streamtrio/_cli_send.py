"""``streamtrio send``: encode through the topic's schema and refuse what the worker would refuse.

Each key and value given on the command line is turned into the object the
topic's schema expects (JSON text for a ``json`` or ``msgpack`` topic, the
text itself for a ``raw`` one or a ``str`` value that is not JSON), built into
its Record (a missing or mistyped field is named), encoded, then decoded
again exactly as a worker would: anything that fails is refused before a
single message is sent. ``--raw`` skips all of it and sends the bytes given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._codecs import RawCodec, Schema, _type_name
from ._exceptions import CodecError, ConfigurationError, ValidationError
from ._records import Record
from ._topic import Topic

__all__ = ["Refused", "encode_messages", "raw_topic"]


class Refused(ConfigurationError):
    """What was given cannot be sent to the topic (the worker would refuse it)."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """One message ready to send: key and value as bytes."""

    key: bytes | None
    value: bytes | None


def declared_topic(app: Any, name: str) -> Topic[Any] | None:
    """The app's topic named ``name`` (its agents', its tables' changelogs...), if it declares one."""
    for topic in app._declared_topics():
        if topic.topics == (name,):
            return topic  # type: ignore[no-any-return]
    return None


def raw_topic(app: Any, name: str, partitions: int | None) -> Topic[Any]:
    """A topic object sending bytes as they are (not registered with the app)."""
    return Topic(app, topics=[name], key_serializer="raw", value_serializer="raw", partitions=partitions)


def _to_object(text: str, schema: Schema, role: str, topic: str) -> Any:
    codec = schema.key_codec if role == "key" else schema.value_codec
    kind = schema.key_type if role == "key" else schema.value_type
    if type(codec) is RawCodec:
        return text
    try:
        data = json.loads(text)
    except ValueError as exc:
        if kind is str or kind is None:
            return text  # a str (or untyped) key or value needs no quotes on the command line
        raise Refused(
            f"the {role} {text!r} is not JSON ({exc}): topic {topic!r} takes "
            f"{_type_name(kind)} {role}s encoded with {codec.name!r}"
            + (" (a JSON object with its fields)" if _is_record(kind) else "")
            + "; pass --raw to send the text as it is"
        ) from exc
    if _is_record(kind):
        if not isinstance(data, dict):
            raise Refused(
                f"the {role} {text!r} is a JSON {type(data).__name__}: topic {topic!r} takes "
                f"{kind.__name__} {role}s, given as a JSON object with its fields"
            )
        try:
            return kind.from_data(data)
        except ValidationError as exc:
            raise Refused(f"the {role} is not a valid {kind.__name__} for topic {topic!r}: {exc}") from exc
    return data


def _is_record(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Record)


def _encode(text: str | None, schema: Schema, role: str, topic: str) -> bytes | None:
    if text is None:
        return None
    obj = _to_object(text, schema, role, topic)
    try:
        if role == "key":
            data = schema.dumps_key(obj)
            schema.loads_key(data)  # what a worker does with it
        else:
            data = schema.dumps_value(obj)
            schema.loads_value(data)
    except CodecError as exc:
        raise Refused(f"topic {topic!r} would not accept the {role} {text!r}: {exc}") from exc
    return data


def encode_messages(
    topic: Topic[Any] | None,
    name: str,
    *,
    key: str | None,
    values: Sequence[str | None],
    raw: bool,
) -> list[Encoded]:
    """Every message to send, encoded, or :class:`Refused` naming the first problem.

    Args:
        topic: the app's declaration of the topic (``None``: undeclared, sent raw).
        name: the topic name.
        key: the key text (``None``: no key).
        values: one value text per message (``None``: a null value, only with ``raw``).
        raw: send the texts' UTF-8 bytes without any check.
    """
    if topic is None or raw:
        return [
            Encoded(
                None if key is None else key.encode(),
                None if v is None else v.encode(),
            )
            for v in values
        ]
    schema = topic.schema
    encoded_key = _encode(key, schema, "key", name)
    out: list[Encoded] = []
    for i, text in enumerate(values):
        if text is None:
            raise Refused(
                f"no value to send to topic {name!r}: give VALUE, --value or --file "
                "(a message without a value, a tombstone, needs --raw)"
            )
        try:
            out.append(Encoded(encoded_key, _encode(text, schema, "value", name)))
        except Refused as exc:
            if len(values) > 1:
                raise Refused(f"message {i + 1}: {exc}") from exc
            raise
    return out
