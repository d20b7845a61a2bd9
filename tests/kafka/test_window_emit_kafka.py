"""``emit="update"`` on a tumbling windowed count, on a real Kafka broker, under exactly_once.

A backlog of clicks with out-of-order timestamps is counted per key in
tumbling windows; ``on_window_close`` (called after every update with
``emit="update"``) produces each update to a topic. Read back
(``read_committed``), each key's updates are what a reference computes from
the source topic as a plain consumer reads it, partition by partition in
offset order: every accepted event is exactly one update of its window with
the running count, and an event whose window was final (end + grace at or
before the partition's stream time) is dropped without one.

Event times are on a one-minute grid, windows are ten minutes and grace five:
stream time follows the clock on an idle partition, and a sub-minute pause
while the backlog is read cannot change which events are late.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import trio

import streamtrio

from ._util import lmdb_app, read_topic, unique, wait_for

PARTITIONS = 2
UNIT = 60
SIZE = 10 * UNIT
GRACE = 5 * UNIT


def random_times(seed: int, n: int = 300) -> list[tuple[str, int]]:
    """(key, event time in seconds from the base) in produce order, some out of order."""
    rng = random.Random(seed)
    clock = 0
    events: list[tuple[str, int]] = []
    for _ in range(n):
        clock += rng.choice([0, 1, 1, 2])
        t = clock - (rng.randrange(13) if rng.random() < 0.3 else 0)
        events.append((f"k{rng.randrange(6)}", max(t, 0) * UNIT))
    return events


def reference(messages: list[Any]) -> tuple[dict[str, list[list[Any]]], int]:
    """(per key the updates ``[start, end, count]`` in order, late events) of the source messages."""
    updates: dict[str, list[list[Any]]] = {}
    counts: dict[tuple[str, int], int] = {}
    stream: dict[int, float] = {}
    late = 0
    for m in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        key, t = m.key().decode(), m.timestamp()[1] / 1000
        n = m.partition()
        stream[n] = max(stream.get(n, t), t)
        start = t - t % SIZE
        if start + SIZE + GRACE <= stream[n]:
            late += 1
            continue
        counts[key, start] = counts.get((key, start), 0) + 1
        updates.setdefault(key, []).append([start, start + SIZE, counts[key, start]])
    return updates, late


async def test_tumbling_updates_match_the_reference_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id = unique("emit")
    app = lmdb_app(
        app_id,
        kafka_bootstrap,
        tmp_path,
        processing_guarantee="exactly_once",
        commit_interval=0.2,
        table_cleanup_interval=0.2,
    )
    clicks = app.topic(f"{app_id}-clicks", key_type=str, value_type=int, partitions=PARTITIONS)
    out = app.topic(f"{app_id}-updates", key_type=str, partitions=PARTITIONS)

    def on_update(key: Any, value: Any) -> None:
        name, (start, end) = key
        out.send_soon(key=name, value=[start, end, value])

    table = app.Table(
        "clicks-per-10m",
        default=int,
        key_type=str,
        value_type=int,
        partitions=PARTITIONS,
        on_window_close=on_update,
    )
    counts = table.tumbling(SIZE, expires=GRACE, emit="update")
    processed = [0]

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            counts[event.key] += event.value
            processed[0] += 1

    base = (int(time.time()) - 86400) // SIZE * SIZE  # a day-old backlog (about 5 hours long), aligned
    events = random_times(5)
    async with app.open_client():
        for key, t in events:
            clicks.send_soon(key=key, value=1, timestamp=base + t)
        await app.producer.flush()
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await wait_for(
            lambda: processed[0] == len(events), timeout=60, what=f"the clicks ({processed[0]} processed)"
        )
        await trio.sleep(1.0)  # the last transaction commits
        dropped = counts.late_dropped
        worker.stop()

    source = await trio.to_thread.run_sync(read_topic, kafka_bootstrap, clicks.get_topic_name(), PARTITIONS)
    assert len(source) == len(events)
    expected, late = reference(source)
    assert late > 0 and dropped == late
    messages = await trio.to_thread.run_sync(read_topic, kafka_bootstrap, out.get_topic_name(), PARTITIONS)
    got: dict[str, list[list[Any]]] = {}
    for m in messages:
        got.setdefault(m.key().decode(), []).append(json.loads(m.value()))
    assert got == expected
    assert sum(len(v) for v in got.values()) == len(events) - late  # one update per accepted event
    assert any(u[2] > 1 for v in got.values() for u in v)  # running counts, not only first writes
