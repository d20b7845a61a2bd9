"""A worker that lost partitions writes nothing more for them (ARCHITECTURE rule 8).

The transport tells the worker with ``on_partitions_lost`` (librdkafka's lost
callback: the session timed out, the member was fenced). Here the worker is
told directly, on the memory transport, while an agent holds an event; the
Kafka scenario (a worker cut off by a proxy) is in tests/chaos/test_zombie.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

import streamtrio
from streamtrio import TP

from .conftest import wait_for
from .test_worker import AppFactory


@dataclass
class Loss:
    """What a worker did about the event in flight (offset 2) when its partition was lost."""

    app: streamtrio.App
    assigned: set[TP]
    committed: int
    changelog_before: list[bytes | None]
    changelog_after: list[bytes | None]


async def lose_partition_mid_event(
    factory: AppFactory, make_table: Callable[[streamtrio.App], Any], add: Callable[[int], int], last: int
) -> Loss:
    """Values 1, 2, 3 on one partition, ``table["k"] += add(value)`` each; the partition
    is lost while the event of value 3 is held in flight, then that event finishes."""
    broker = factory.broker
    app = factory(commit_interval=0.05)
    numbers = app.topic("numbers", key_type=str, value_type=int, partitions=1)
    table = make_table(app)
    gate = trio.Event()
    seen: list[int] = []

    @app.agent(numbers)
    async def write(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            if event.value == 3:
                await gate.wait()
            table[event.key] += add(event.value)
            seen.append(event.value)

    changelog = f"{app.conf.appid}-{table.name}-changelog"
    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        for value in (1, 2, 3):
            await numbers.send(key="k", value=value)
        await wait_for(lambda: broker.committed(app.conf.appid).get(TP("numbers", 0)) == 2)
        await wait_for(lambda: [m.value for m in broker.messages(changelog, 0)][-1:] == [msgpack.packb(last)])
        before = [m.value for m in broker.messages(changelog, 0)]
        # The event at offset 2 is in flight when the partition is lost.
        await worker.on_partitions_lost(frozenset({TP("numbers", 0)}))
        gate.set()
        await wait_for(lambda: seen == [1, 2, 3])
        await trio.sleep(0.3)  # several commit intervals
        after = [m.value for m in broker.messages(changelog, 0)]
        committed = broker.committed(app.conf.appid)[TP("numbers", 0)]
        assigned = set(worker.assigned)
        worker.stop()
    return Loss(app, assigned, committed, before, after)


async def test_after_a_loss_the_event_in_flight_writes_and_commits_nothing(
    streamtrio_app_factory: AppFactory,
) -> None:
    loss = await lose_partition_mid_event(
        streamtrio_app_factory, lambda app: app.Table("counts", default=int, partitions=1), lambda v: 1, 2
    )
    assert loss.committed == 2
    assert loss.changelog_after == loss.changelog_before
    assert loss.app.tables.discarded_writes == 1
    assert TP("numbers", 0) not in loss.assigned


async def test_a_commit_prepared_before_a_loss_is_not_sent_after_it(
    streamtrio_app_factory: AppFactory,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by the chaos suite: the offsets a periodic commit read before the partitions
    were lost (and given back) must not be committed after it: the loss discarded
    what those events wrote."""
    caplog.set_level(logging.INFO, logger="streamtrio")
    broker = streamtrio_app_factory.broker
    app = streamtrio_app_factory(commit_interval=1.0)
    numbers = app.topic("numbers", value_type=int, partitions=1)
    side = app.topic("side", value_type=int, partitions=1)
    seen: list[int] = []

    @app.agent(numbers)
    async def work(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)

    tp = TP("numbers", 0)
    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        for value in range(3):
            await numbers.send(value=value)
        await wait_for(lambda: broker.committed(app.conf.appid).get(tp) == 3, timeout=30)
        broker.create_topic("side", 1)
        broker.block_topic("side")
        side.send_soon(value=1)  # outside any event: the next commit's flush waits for it
        for value in range(3, 5):
            await numbers.send(value=value)
        await wait_for(lambda: len(seen) == 5, timeout=30)
        await trio.sleep(1.5)  # the periodic commit read offset 5 and waits in its flush
        await worker.on_partitions_lost(frozenset({tp}))
        await worker.on_partitions_assigned(frozenset({tp}))
        broker.unblock_topic("side")
        for _ in range(10):
            await trio.lowlevel.checkpoint()
        assert broker.committed(app.conf.appid)[tp] == 3
        assert "commit skipped: partitions moved in a rebalance" in caplog.text
        worker.stop()


async def test_after_a_loss_the_event_in_flight_writes_nothing_to_a_global_table(
    streamtrio_app_factory: AppFactory,
) -> None:
    loss = await lose_partition_mid_event(
        streamtrio_app_factory,
        lambda app: app.GlobalTable("totals", default=int, partitions=1),
        lambda v: v,
        3,
    )
    assert loss.changelog_after == loss.changelog_before
    assert loss.app.tables.discarded_writes == 1
