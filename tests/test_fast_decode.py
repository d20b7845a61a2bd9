"""The consuming hot path's loaders: faster than the schema's own, never different.

A fast loader may refuse input the full one accepts (msgspec refuses NaN, a
byte order mark, UTF-16); the event is then decoded by the full path. An
agent must see exactly what the full decode gives either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest

import streamtrio
from streamtrio._codecs import Schema
from streamtrio._records import Record

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

#: JSON values: the first ones msgspec decodes itself, the rest it refuses.
SAMPLES = [
    b'{"user":"u-1","amount":17}',
    b"[123456789012345678901234567890, -9223372036854775809]",
    b'{"a": 1, "a": 2, "f": [0.1, -0.0, 1E5]}',
    b'{"n": NaN, "i": Infinity}',
    b'\xef\xbb\xbf{"a":1}',
    b' {"a":1}\n',
    '{"a":1}'.encode("utf-16"),
]


class Payment(Record, namespace="tests.fast_decode.Payment"):
    account: str
    amount: int


def _same(a: Any, b: Any) -> bool:
    return repr(a) == repr(b)  # NaN != NaN; repr tells equal values apart from floats


@pytest.mark.parametrize("data", SAMPLES)
def test_fast_value_loader_gives_the_full_value_or_refuses(data: bytes) -> None:
    schema = Schema(key_type=str)
    full = schema._load_value(data)
    assert _same(full, json.loads(data))
    try:
        fast = schema._fast_load_value(data)
    except ValueError:
        # the event is decoded by the full path then; the plain sample must not be
        assert data != SAMPLES[0], "the fast loader refused a plain JSON object"
        return
    assert _same(fast, full)


def test_fast_key_loader_refuses_what_only_the_full_one_takes() -> None:
    schema = Schema(key_type=str)
    assert schema._fast_load_key(b"bl\xc3\xa5") == schema._load_key(b"bl\xc3\xa5") == "blå"
    assert schema._load_key(bytearray(b"k")) == "k"  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        schema._fast_load_key(bytearray(b"k"))  # type: ignore[arg-type]


def test_fast_value_loader_revives_records_like_the_full_one() -> None:
    data = Payment(account="a", amount=3).dumps()
    schema = Schema()
    assert schema._fast_load_value(data) == schema._load_value(data) == Payment(account="a", amount=3)


async def test_an_agent_sees_the_full_decode_of_what_the_fast_one_refuses(app_factory: AppFactory) -> None:
    app = app_factory(commit_interval=0.01)
    events = app.topic("events", key_type=str, partitions=1)
    seen: list[tuple[str, Any]] = []

    @app.agent(events)
    async def read(stream: streamtrio.Stream[Any]) -> None:
        async for event in stream.events():
            seen.append((event.key, event.value))

    raw = app.topic("events", key_serializer="raw", value_serializer="raw")
    payment = Payment(account="a", amount=3)
    async with running(app):
        for i, data in enumerate(SAMPLES):
            await raw.send(key=f"k{i}".encode(), value=data, partition=0)
        await raw.send(key=b"p", value=payment.dumps(), partition=0)
        await wait_for(lambda: len(seen) == len(SAMPLES) + 1)
    assert [key for key, _ in seen] == [f"k{i}" for i in range(len(SAMPLES))] + ["p"]
    for (_, value), data in zip(seen, SAMPLES, strict=False):
        assert _same(value, json.loads(data)), data
    assert math.isnan(seen[3][1]["n"])
    assert seen[-1][1] == payment
