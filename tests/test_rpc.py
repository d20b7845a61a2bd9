"""Agent RPC on the memory transport: ask, map, kvmap, join, timeouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

import streamtrio

from .conftest import running

AppFactory = Callable[..., streamtrio.App]


def rpc_app(app_factory: AppFactory, **options: Any) -> tuple[streamtrio.App, streamtrio.Agent[Any]]:
    app = app_factory(**options)

    @app.agent(app.topic("squares", partitions=4), concurrency=2)
    async def square(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value * value

    return app, square


async def test_ask_returns_the_agents_reply(app_factory: AppFactory) -> None:
    app, square = rpc_app(app_factory)
    async with running(app):
        assert await square.ask(7) == 49
        assert await square.ask(value=3, key="k") == 9


async def test_map_1000_asks_in_order(app_factory: AppFactory) -> None:
    app, square = rpc_app(app_factory, commit_interval=0.05)
    async with running(app):
        replies = [reply async for reply in square.map(range(1000))]
        joined = await square.join([5, 6, 7])
        kv_replies = [reply async for reply in square.kvmap({"a": 2, "b": 3})]
    assert replies == [v * v for v in range(1000)]
    assert joined == [25, 36, 49]
    assert kv_replies == [4, 9]  # the replies alone, as Faust's kvmap yields


async def test_ask_from_a_client_to_a_worker_in_another_app_instance(app_factory: AppFactory) -> None:
    """The asking side runs no worker: only a client (producer + reply reader)."""
    worker_app, _ = rpc_app(app_factory)
    client_app, client_square = rpc_app(app_factory)
    async with running(worker_app), client_app.open_client():
        assert await client_square.ask(12) == 144


async def test_ask_timeout_names_the_agent(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = app_factory()

    @app.agent(app.topic("silent", partitions=1))
    async def silent(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            pass  # never yields: no reply

    async with running(app):
        with pytest.raises(streamtrio.AskTimeoutError, match="agent 'silent' did not reply within 5s"):
            await silent.ask(1, timeout=5.0)


async def test_ask_without_worker_or_client_is_a_clear_error(app_factory: AppFactory) -> None:
    _app, square = rpc_app(app_factory)
    with pytest.raises(streamtrio.ClosedError, match="open_client"):
        await square.ask(2)


async def test_plain_consumers_see_plain_values(app_factory: AppFactory) -> None:
    app, square = rpc_app(app_factory)
    seen: list[Any] = []

    @app.agent(square.channel)
    async def observer(stream: streamtrio.Stream[Any]) -> None:
        async for value in stream:
            seen.append(value)

    async with running(app):
        assert await square.ask(4) == 16
        with trio.fail_after(5):
            while not seen:
                await trio.sleep(0.01)
    assert seen == [4]
