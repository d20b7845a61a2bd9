"""Testing a table: the agent writes the real table; read it back while the app runs."""

from __future__ import annotations

import pytest

import streamtrio
from streamtrio.testing import TestApp

app = streamtrio.App("wordcount", broker="kafka://localhost:9092")
words = app.topic("words", key_type=str, value_type=str, partitions=4)
counts = app.Table("counts", default=int, key_type=str, value_type=int, partitions=4)


@app.agent(words)
async def count(stream: streamtrio.Stream[str]) -> None:
    async for event in stream.events():
        counts[event.key] += 1


async def test_counts_in_a_test_context() -> None:
    async with count.test_context() as ctx:
        for _ in range(3):
            await ctx.put("hello", key="hello")
        assert counts["hello"] == 3
        committed = await ctx.commit()  # tables persist and produce their changelog
        assert sum(committed.values()) == 3


@pytest.fixture
def streamtrio_app() -> streamtrio.App:
    """The app the test_app fixture runs (usually in your conftest.py)."""
    return app


async def test_counts_with_the_test_app_fixture(test_app: TestApp) -> None:
    for word in ["a", "b", "a"]:
        await test_app.send(words, word, key=word)
    await test_app.drain()
    assert test_app.table("counts")["a"] == 2
    assert test_app.table("counts")["b"] == 1
