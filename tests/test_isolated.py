"""isolated_partitions: one actor per assigned partition, following rebalances."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import trio
import trio.lowlevel

import streamtrio

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


async def test_actors_follow_assignment_and_nothing_is_lost_or_repeated(app_factory: AppFactory) -> None:
    processed: Counter[tuple[int, int]] = Counter()
    actor_partitions: dict[str, set[int]] = {"a": set(), "b": set()}

    def make(name: str) -> tuple[streamtrio.App, streamtrio.Agent[Any], streamtrio.Topic[Any]]:
        app = app_factory(commit_interval=0.02)
        topic = app.topic("jobs", value_type=int, partitions=4)

        @app.agent(topic, isolated_partitions=True)
        async def work(stream: streamtrio.Stream[int]) -> None:
            async for event in stream.events():
                partition = event.message.partition
                actor_partitions[name].add(partition)
                processed[(partition, event.message.offset)] += 1
                await trio.lowlevel.checkpoint()

        return app, work, topic

    app_a, work_a, topic = make("a")
    app_b, work_b, _ = make("b")
    async with running(app_a):
        await wait_for(lambda: work_a.actors() == 4)
        async with app_a.open_client():
            for v in range(200):
                await topic.send(key=str(v), value=v)
        await wait_for(lambda: sum(processed.values()) == 200)
        async with running(app_b):
            await wait_for(lambda: work_a.actors() == 2 and work_b.actors() == 2)
            actor_partitions["b"].clear()
            for v in range(200, 400):
                await topic.send(key=str(v), value=v)
            await wait_for(lambda: sum(processed.values()) == 400)
        await wait_for(lambda: work_a.actors() == 4)
    assert len(processed) == 400
    assert set(processed.values()) == {1}  # graceful rebalances: nothing twice
    assert actor_partitions["b"] and actor_partitions["b"].isdisjoint({0, 1})


def test_isolated_partitions_rejects_concurrency(app_factory: AppFactory) -> None:
    app = app_factory()
    import pytest

    with pytest.raises(streamtrio.ConfigurationError, match="concurrency must be 1"):

        @app.agent(app.topic("t"), isolated_partitions=True, concurrency=2)
        async def bad(stream: Any) -> None:
            pass
