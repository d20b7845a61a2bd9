"""Errors that could point at the fix do: they name the setting that changes the behaviour."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

import streamtrio

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

BIG = 2 * 1024 * 1024  # above the memory broker's message.max.bytes, like Kafka's default


async def test_an_undecodable_value_names_the_value_decode_error_setting(app_factory: AppFactory) -> None:
    app = app_factory(commit_interval=0.01)
    topic = app.topic("json-in", value_type=int, partitions=1)

    @app.agent(topic)
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            pass

    raw = app.topic("json-in", value_serializer="raw")
    async with app.open_client():
        await raw.send(value=b"{not json", partition=0)
    with pytest.raises(streamtrio.AgentError) as info:
        await streamtrio.serve(app)
    for text in (str(info.value), str(info.value.__cause__)):
        assert "topic='json-in' partition=0 offset=0" in text
        assert 'value_decode_error="skip"' in text
        assert '"dead_letter"' in text


async def test_a_skipped_message_is_logged_without_the_hint(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_factory(commit_interval=0.01, value_decode_error="skip")
    topic = app.topic("json-in", value_type=int, partitions=1)
    got: list[int] = []

    @app.agent(topic)
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for n in stream:
            got.append(n)

    raw = app.topic("json-in", value_serializer="raw")
    with caplog.at_level(logging.WARNING, logger="streamtrio"):
        async with running(app):
            for payload in (b"{not json", b"2"):
                await raw.send(value=payload, partition=0)
            await wait_for(lambda: got == [2])
    [skipped] = [r.getMessage() for r in caplog.records if "skipped a message" in r.getMessage()]
    assert "value_decode_error" not in skipped


async def test_a_message_too_large_names_the_size_settings(app_factory: AppFactory) -> None:
    app = app_factory()
    out = app.topic("out", value_serializer="raw", partitions=1)
    async with app.open_client():
        with pytest.raises(streamtrio.ProducerError) as info:
            await out.send(value=b"x" * BIG)
    text = str(info.value)
    assert "MSG_SIZE_TOO_LARGE" in text
    assert "producer_config={'message.max.bytes': N}" in text
    assert "max.message.bytes" in text
