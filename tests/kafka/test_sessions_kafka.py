"""Session windows against a real Kafka broker: sessions close on idle partitions.

A backlog with old timestamps is consumed under exactly_once; no later event
comes, so every session closes by the clock (stream time follows it on the
idle partitions). Each session's close is produced to a topic inside its
firing: read back (read_committed) every session is there exactly once with
its reference count, and a new machine recovering the changelog finds no
session left open and reports none again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio

import streamtrio

from ._util import lmdb_app, read_topic, unique, wait_for

PARTITIONS = 2
GAP = 1.0


def session_app(app_id: str, bootstrap: str, datadir: Path, **options: Any) -> Any:
    app = lmdb_app(
        app_id,
        bootstrap,
        datadir,
        processing_guarantee="exactly_once",
        commit_interval=0.2,
        table_cleanup_interval=0.2,
        **options,
    )
    clicks = app.topic(f"{app_id}-clicks", key_type=str, value_type=int, partitions=PARTITIONS)
    out = app.topic(f"{app_id}-closed", key_type=str, value_type=str, partitions=PARTITIONS)
    counts = {"processed": 0, "closed": 0}

    def on_close(key: Any, value: Any) -> None:
        name, (start, end) = key
        out.send_soon(key=name, value=f"{name}:{start}:{end}:{value}")
        counts["closed"] += 1

    table = app.Table(
        "visits", default=int, key_type=str, value_type=int, partitions=PARTITIONS, on_window_close=on_close
    )
    sessions = table.session(GAP, expires=1.0)

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            sessions[event.key] += event.value
            counts["processed"] += 1

    return app, table, clicks, out, counts


async def test_sessions_close_on_idle_partitions_exactly_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = unique("sessions")
    base = round(time.time()) - 3600.0  # an hour-old backlog: only the clock can close its last sessions
    # in time order (per partition nothing is late)
    events = [(f"k{k}", base + t) for t in (0.0, 0.5, 1.2, 5.0, 5.9, 9.0) for k in range(6)]
    # per key: sessions [0, 1.2] (3 events), [5, 5.9] (2), [9, 9] (1)
    expected = sorted(
        f"k{k}:{base + s}:{base + e}:{n}"
        for k in range(6)
        for s, e, n in ((0.0, 1.2, 3), (5.0, 5.9, 2), (9.0, 9.0, 1))
    )
    app, table, clicks, out, counts = session_app(app_id, kafka_bootstrap, tmp_path / "a")
    async with app.open_client():
        for key, ts in events:
            clicks.send_soon(key=key, value=1, timestamp=ts)
        await app.producer.flush()
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: counts["processed"] == len(events), timeout=60, what="the events")
        await wait_for(lambda: counts["closed"] == len(expected), timeout=30, what="the idle closes")
        await trio.sleep(1.0)  # the last firing's transaction commits
        assert table.info()["late_events_dropped"] == 0
        assert dict(table.items()) == {}
        worker.stop()

    messages = await trio.to_thread.run_sync(read_topic, kafka_bootstrap, out.get_topic_name(), PARTITIONS)
    assert sorted(json.loads(m.value()) for m in messages) == expected

    app2, table2, _, _, counts2 = session_app(
        app_id, kafka_bootstrap, tmp_path / "b", table_standby_replicas=0
    )
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        await app2.tables.wait_until_recovery_completed()
        await trio.sleep(2 * GAP + 1)
        assert dict(table2.items()) == {}
        assert counts2["closed"] == 0
        worker.stop()
