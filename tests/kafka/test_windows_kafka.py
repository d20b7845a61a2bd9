"""A windowed table against a real Kafka-protocol broker, on the real clock.

A backlog of events with old timestamps is consumed, the windows close on
time with no further event, each is reported once with the reference count,
and a new machine recovering the changelog finds them all tombstoned.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import trio

import streamtrio

from ._util import lmdb_app

PARTITIONS = 4


def windowed_app(app_id: str, bootstrap: str, datadir: Path, closed: list[Any], **options: Any) -> Any:
    app = lmdb_app(app_id, bootstrap, datadir, commit_interval=0.3, table_cleanup_interval=0.2, **options)
    clicks = app.topic(f"{app_id}-clicks", key_type=str, value_type=int, partitions=PARTITIONS)
    table = app.Table(
        "per_second",
        default=int,
        key_type=str,
        value_type=int,
        partitions=PARTITIONS,
        on_window_close=lambda key, value: closed.append((key, value)),
    )
    windowed = table.tumbling(1.0, expires=1.5)
    processed = [0]

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            windowed[event.key] += event.value
            processed[0] += 1

    return app, table, windowed, clicks, processed


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_windows_close_on_time_and_survive_a_new_machine(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = f"win-{uuid.uuid4().hex[:8]}"
    base = math.floor(time.time()) - 3600.0  # an hour-old backlog
    # 400 events over 8 s of event time, slightly out of order (< expires), boundaries included
    events = [(f"user-{i % 7}", base + (i // 50) + (i % 50) / 50) for i in range(400)]
    events[10], events[60] = events[60], events[10]
    expected = Counter((key, (math.floor(ts), math.floor(ts) + 1.0)) for key, ts in events)
    closed: list[Any] = []

    app, table, windowed, clicks, processed = windowed_app(app_id, kafka_bootstrap, tmp_path / "a", closed)
    async with app.open_client():
        for key, ts in events:
            clicks.send_soon(key=key, value=1, timestamp=ts)
        await app.producer.flush()
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: processed[0] == len(events))
        # no more events: stream time follows the wall clock and every window closes
        await wait_for(lambda: len(closed) >= len(expected))
        await trio.sleep(1.0)
        assert windowed.late_dropped == 0
        assert dict(table.items()) == {}
        worker.stop()
    assert Counter(dict(closed)) == expected
    assert len(closed) == len(expected)  # once each

    # A new machine replays the changelog: every window was tombstoned, none is reported again.
    closed_again: list[Any] = []
    app2, table2, _, _, _ = windowed_app(
        app_id, kafka_bootstrap, tmp_path / "b", closed_again, table_standby_replicas=0
    )
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        await app2.tables.wait_until_recovery_completed()
        assert sum(app2.tables.statistics().recovered.values()) > 0
        assert dict(table2.items()) == {}
        await trio.sleep(2.0)
        worker.stop()
    assert closed_again == []
