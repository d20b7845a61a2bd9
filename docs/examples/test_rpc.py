"""Testing an RPC agent: ask it while it runs for real."""

from __future__ import annotations

from typing import Any

import streamtrio

app = streamtrio.App("maths", broker="kafka://localhost:9092")


@app.agent(app.topic("squares", value_type=int, partitions=4))
async def square(stream: streamtrio.Stream[int]) -> Any:
    async for value in stream:
        yield value * value


async def test_ask_gets_the_reply() -> None:
    async with square.test_context() as ctx:
        assert await square.ask(7) == 49
        assert [reply async for reply in square.map([1, 2, 3])] == [1, 4, 9]
        # map() asks concurrently: the agent processes them in any order
        assert sorted(ctx.results) == [1, 4, 9, 49]
