"""On Apache Kafka: a worker whose tables are still recovering does not hold the group up.

Worker A's recovery is held on a gate (an ``on_recover`` callback); worker B
joins. The rebalance completes and B consumes its share while A still
recovers, because A's rebalance callback returned at once (before, A's
consumer thread sat in the callback and the group waited for A up to its
max.poll.interval).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import streamtrio
from streamtrio import TP

from ._util import spread_keys, unique, wait_for
from .test_worker_kafka import kafka_app, new_topic, produce_async

pytestmark = pytest.mark.slow

PARTITIONS = 2


def counting_app(
    app_id: str, topic: str, bootstrap: str, gate: trio.Event | None
) -> tuple[streamtrio.App, list[Any]]:
    app = kafka_app(app_id, bootstrap)
    events = app.topic(topic, key_type=bytes, key_serializer="raw", value_type=bytes, value_serializer="raw",
                       partitions=PARTITIONS)  # fmt: skip
    counts = app.Table("counts", default=int, partitions=PARTITIONS)
    seen: list[Any] = []
    if gate is not None:

        @counts.on_recover
        async def held() -> None:
            await gate.wait()

    @app.agent(events)
    async def count(stream: streamtrio.Stream[bytes]) -> None:
        async for event in stream.events():
            counts[event.key.decode()] += 1
            seen.append((event.message.partition, event.message.offset))

    return app, seen


async def test_a_worker_recovering_its_tables_lets_the_group_rebalance_on_kafka(kafka_bootstrap: str) -> None:
    app_id = unique("recovering")
    topic = await new_topic(kafka_bootstrap, "events", PARTITIONS)
    gate = trio.Event()
    a_app, a_seen = counting_app(app_id, topic, kafka_bootstrap, gate)
    b_app, b_seen = counting_app(app_id, topic, kafka_bootstrap, None)
    everything = {TP(topic, p) for p in range(PARTITIONS)}
    async with trio.open_nursery() as nursery:
        a: streamtrio.Worker = await nursery.start(streamtrio.serve, a_app)
        await wait_for(lambda: everything <= a.assigned, timeout=30, what="A's assignment")
        b: streamtrio.Worker = await nursery.start(streamtrio.serve, b_app)
        await wait_for(
            lambda: bool(b.assigned & everything) and bool(a.assigned & everything),
            timeout=30,
            what="the partitions split while A still recovers",
        )
        assert not gate.is_set()
        produced = await produce_async(kafka_bootstrap, topic, spread_keys(200))
        theirs = {tp.partition for tp in b.assigned & everything}
        await wait_for(
            lambda: len(b_seen) == sum(produced.count(p) for p in theirs), timeout=30, what="B's events"
        )
        gate.set()
        await wait_for(lambda: len(a_seen) + len(b_seen) == 200, timeout=30, what="every event")
        a.stop()
        b.stop()
