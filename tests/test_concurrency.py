"""concurrency=N keeps per-key order, and commits stay at the contiguous acked frontier."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


@pytest.mark.parametrize("via", ["topic", "channel"])
async def test_per_key_order_under_concurrency(
    app_factory: AppFactory, broker: MemoryBroker, via: str
) -> None:
    """An order-sensitive per-key computation gives the sequential result with concurrency=8."""
    app = app_factory(commit_interval=0.02)
    source: streamtrio.Channel[Any] = (
        app.topic("ledger", key_type=str, value_type=int, partitions=2) if via == "topic" else app.channel()
    )
    # balance = balance * 2 + x is order-sensitive: any reordering changes it
    balances: dict[str, int] = defaultdict(int)
    rng = random.Random(42)

    @app.agent(source, concurrency=8)
    async def apply(stream: streamtrio.Stream[int]) -> None:
        async for key, value in stream.items():
            before = balances[key]
            await trio.sleep(rng.random() * 0.002)  # actors interleave
            balances[key] = before * 2 + value

    keys = [f"acct-{i}" for i in range(20)]
    ops = [(rng.choice(keys), rng.randint(0, 9)) for _ in range(600)]
    expected: dict[str, int] = defaultdict(int)
    for key, value in ops:
        expected[key] = expected[key] * 2 + value

    async with running(app):
        for key, value in ops:
            await source.send(key=key, value=value)
        await wait_for(lambda: balances == expected, timeout=20)
        if via == "topic":
            ends = {TP("ledger", p): broker.end_offset(TP("ledger", p)) for p in range(2)}
            await wait_for(lambda: broker.committed("testapp") == {tp: o for tp, o in ends.items() if o})
    assert balances == expected


async def test_restart_under_concurrency_keeps_key_order(app_factory: AppFactory) -> None:
    app = app_factory(agent_restart_backoff=0.001)
    channel = app.channel()
    seen: dict[str, list[int]] = defaultdict(list)
    failed = False

    @app.agent(channel, concurrency=4, on_error="restart")
    async def once_flaky(stream: streamtrio.Stream[int]) -> None:
        nonlocal failed
        async for key, value in stream.items():
            if key == "k1" and value == 3 and not failed:
                failed = True
                raise RuntimeError("first attempt fails")
            seen[key].append(value)

    async with running(app):
        for value in range(10):
            for key in ("k0", "k1", "k2"):
                await channel.send(key=key, value=value)
        await wait_for(lambda: sum(map(len, seen.values())) == 30)
    assert failed
    assert all(values == list(range(10)) for values in seen.values()), dict(seen)
