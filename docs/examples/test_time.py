"""Testing time: batches closed by take(within=) and timers, on trio's MockClock."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import streamtrio
from streamtrio.testing import open_test_app

app = streamtrio.App("clicks", broker="kafka://localhost:9092")
clicks = app.topic("clicks", key_type=str, value_type=int, partitions=1)
per_minute = app.topic("clicks-per-minute", value_type=int, partitions=1)
heartbeats = app.topic("heartbeats", value_type=float, partitions=1)


@app.agent(clicks, sink=[per_minute])
async def count_per_minute(stream: streamtrio.Stream[int]) -> Any:
    # a window of up to 60 s that starts with its first click
    async for batch in stream.take(10_000, within=60.0):
        yield sum(batch)


@app.timer(interval=30.0)
async def heartbeat() -> None:
    await heartbeats.send(value=trio.current_time())


async def test_a_window_closes_after_a_minute(autojump_clock: trio.testing.MockClock) -> None:
    async with count_per_minute.test_context() as ctx:
        start = trio.current_time()
        for n in (1, 2, 3):
            await ctx.send(n)  # sent, not waited for: they share one window
        await ctx.drain()  # the window closes 60 s of virtual time later
        assert trio.current_time() - start == 60.0
        assert ctx.results == [6]
        assert [m.value for m in ctx.sent_to(per_minute)] == [6]


async def test_timers_fire_as_time_passes(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_app(app) as test_app:
        start = trio.current_time()
        await test_app.advance(95.0)  # takes no real time
        assert [m.value - start for m in test_app.messages(heartbeats)] == [30.0, 60.0, 90.0]
