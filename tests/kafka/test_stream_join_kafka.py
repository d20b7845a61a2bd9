"""A stream-stream windowed join against a real Kafka broker, across a move to a new machine.

Left events are buffered by a first worker; a new machine (empty data dir)
recovers the buffer from its changelog, and right events arriving there join
them: every pair in the window comes out once.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any

import trio

import streamtrio

from ._util import lmdb_app, wait_for

PARTITIONS = 2


def make_app(app_id: str, bootstrap: str, datadir: Path, **options: Any) -> Any:
    app = lmdb_app(app_id, bootstrap, datadir, commit_interval=0.3, **options)
    left = app.topic(f"{app_id}-left", key_type=str, value_type=int, partitions=PARTITIONS)
    right = app.topic(f"{app_id}-right", key_type=str, value_type=int, partitions=PARTITIONS)
    both = app.topic(f"{app_id}-left", f"{app_id}-right", key_type=str, value_type=int, partitions=PARTITIONS)
    buffer = app.Table("buffer", partitions=PARTITIONS)
    pairs: list[tuple[int, int]] = []
    seen = [0]

    @app.agent(both)
    async def join(stream: streamtrio.Stream[int]) -> None:
        async for pair in stream.window_join(
            buffer, left=left, right=right, before=2.0, after=2.0, grace=3600.0
        ):
            pairs.append(pair)

    @app.agent(both)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            seen[0] += 1

    return app, left, right, pairs, seen


async def test_window_join_buffer_moves_to_a_new_machine(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = f"sjoin-{uuid.uuid4().hex[:8]}"
    base = math.floor(time.time()) - 600.0
    app, left, _, pairs, seen = make_app(app_id, kafka_bootstrap, tmp_path / "a")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        async with app.open_client():
            for i in range(40):
                left.send_soon(key=f"k{i % 8}", value=i, timestamp=base + i)
            await app.producer.flush()
        await wait_for(lambda: seen[0] == 40, timeout=60, what="the left events")
        await trio.sleep(1.0)
        worker.stop()
    assert pairs == []

    app2, _, right2, pairs2, seen2 = make_app(
        app_id, kafka_bootstrap, tmp_path / "b", table_standby_replicas=0
    )
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        await app2.tables.wait_until_recovery_completed()
        async with app2.open_client():
            for j in range(40):
                right2.send_soon(key=f"k{j % 8}", value=100 + j, timestamp=base + j + 0.5)
            await app2.producer.flush()
        await wait_for(lambda: seen2[0] == 40, timeout=60, what="the right events")
        await trio.sleep(1.0)
        worker.stop()
    expected = sorted(
        (i, 100 + j) for i in range(40) for j in range(40) if i % 8 == j % 8 and i - 2.0 <= j + 0.5 <= i + 2.0
    )
    assert expected
    assert sorted(pairs2) == expected
