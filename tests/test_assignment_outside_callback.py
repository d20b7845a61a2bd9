"""Table recovery runs outside the rebalance callback (issue 20).

The assign callback returns at once; the new partitions stay paused while
their tables recover in a task. So a recovery, however long, never holds up
the next rebalance: here worker A's recovery is held on a gate (its
``on_recover`` callback) while worker B joins, and the group still
rebalances and B gets its partitions.
"""

from __future__ import annotations

import trio

import streamtrio
from streamtrio import TP

from .conftest import wait_for
from .test_worker import AppFactory


def counting_app(app_factory: AppFactory, gate: trio.Event | None) -> tuple[streamtrio.App, list[int]]:
    app = app_factory(commit_interval=0.05)
    numbers = app.topic("numbers", key_type=str, value_type=int, partitions=2)
    counts = app.Table("counts", default=int, partitions=2)
    seen: list[int] = []

    if gate is not None:

        @counts.on_recover
        async def held() -> None:
            await gate.wait()

    @app.agent(numbers)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            counts[event.key] += 1
            seen.append(event.value)

    return app, seen


async def test_a_worker_recovering_its_tables_lets_the_group_rebalance(
    streamtrio_app_factory: AppFactory,
) -> None:
    gate = trio.Event()
    a_app, a_seen = counting_app(streamtrio_app_factory, gate)
    b_app, b_seen = counting_app(streamtrio_app_factory, None)
    everything = {TP("numbers", 0), TP("numbers", 1)}
    async with trio.open_nursery() as nursery:
        a: streamtrio.Worker = await nursery.start(streamtrio.serve, a_app)
        await wait_for(lambda: everything <= a.assigned)
        await trio.sleep(0.2)
        assert a.generation >= 1 and a._recovering  # held in recovery
        b: streamtrio.Worker = await nursery.start(streamtrio.serve, b_app)
        # The group rebalances although A's recovery has not finished.
        await wait_for(lambda: bool(b.assigned & everything) and not gate.is_set(), timeout=10)
        assert not (a.assigned & b.assigned & everything)
        gate.set()
        for value in range(20):
            await a_app.topic("numbers", key_type=str, value_type=int).send(key=f"k{value}", value=value)
        await wait_for(lambda: sorted(a_seen + b_seen) == list(range(20)), timeout=10)
        a.stop()
        b.stop()
