"""Testing a windowed aggregation: event timestamps pick the window, the MockClock closes it."""

from __future__ import annotations

from typing import Any

import trio.testing

import streamtrio
from streamtrio.testing import open_test_app

app = streamtrio.App("pageviews", broker="kafka://localhost:9092")
views = app.topic("views", key_type=str, value_type=str, partitions=4)
summaries = app.topic("view-summaries", key_type=str, value_type=int, partitions=4)


async def summarize(key: Any, views_in_window: int) -> None:
    user, (_start, end) = key
    await summaries.send(key=user, value=views_in_window, timestamp=end)


per_minute = app.Table(
    "views_per_minute", default=int, partitions=4, on_window_close=summarize
).tumbling(60, expires=60)


@app.agent(views)
async def count(stream: streamtrio.Stream[str]) -> Any:
    async for event in stream.events():
        per_minute[event.key] += 1  # the window of the event's timestamp
        yield per_minute[event.key].current()


MINUTE = 1_200_000.0  # an epoch time on a minute boundary


async def test_events_count_in_the_window_of_their_timestamp() -> None:
    async with count.test_context() as ctx:
        for second in (0, 10, 30, 70):
            await ctx.put("/home", key="alice", timestamp=MINUTE + second)
        # the fourth view is in the next minute's window
        assert ctx.results == [1, 2, 3, 1]


async def test_closed_windows_are_summarized(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_app(app) as test_app:
        for second in (0, 10, 30, 70):
            await test_app.send(views, "/home", key="alice", timestamp=MINUTE + second)
        await test_app.drain()
        assert test_app.messages(summaries) == []  # both windows are still open
        # Idle, the partition's stream time moves on with the clock: a window
        # closes `expires` after its end, here within 200 s of virtual time.
        await test_app.advance(200)
        closed = [(m.key, m.value, m.timestamp) for m in test_app.messages(summaries)]
        assert closed == [("alice", 3, MINUTE + 60), ("alice", 1, MINUTE + 120)]
