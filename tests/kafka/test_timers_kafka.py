"""Durable timers and session windows against a real Kafka broker.

A worker processes a backlog (event-time timers and sessions with old,
out-of-order timestamps), then stops with some timers pending and some
sessions open. A new machine (empty data dir) recovers both from the
changelog, and newer events fire the rest: every timer fires once and every
session is reported once, with the reference counts, under exactly_once.
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
GAP = 2.0
EXPIRES = 1.0
DELAY = 3.0


def make_app(app_id: str, bootstrap: str, datadir: Path, log: dict[str, list[Any]], **options: Any) -> Any:
    app = lmdb_app(
        app_id, bootstrap, datadir, commit_interval=0.3, processing_guarantee="exactly_once", **options
    )
    clicks = app.topic(f"{app_id}-clicks", key_type=str, value_type=int, partitions=PARTITIONS)
    visits = app.Table(
        "visits",
        default=int,
        key_type=str,
        value_type=int,
        partitions=PARTITIONS,
        on_window_close=lambda key, value: log["closed"].append((key, value)),
    ).session(GAP, expires=EXPIRES)
    reminders = app.Table("reminders", default=int, key_type=str, value_type=int, partitions=PARTITIONS)
    processed = [0]

    @reminders.on_timer
    def remind(timer: streamtrio.KeyTimer) -> None:
        log["fired"].append((timer.key, timer.when))

    @app.agent(clicks)
    async def track(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            visits[event.key] += 1
            reminders.schedule(event.key, event.message.timestamp + DELAY)
            processed[0] += 1

    return app, visits, reminders, clicks, processed


async def test_timers_and_sessions_survive_a_new_machine(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = f"timers-{uuid.uuid4().hex[:8]}"
    base = math.floor(time.time()) - 3600.0
    # per key: a session 0..1.5 (0.75 arrives last, out of order but within expires) and one 10..11
    first = [(f"k{i}", base + t) for t in (0.0, 1.5, 0.75, 10.0, 11.0) for i in range(4)]
    later = [(f"k{i}", base + 30.0) for i in range(4)]
    log: dict[str, list[Any]] = {"closed": [], "fired": []}

    app, _visits, reminders, clicks, processed = make_app(app_id, kafka_bootstrap, tmp_path / "a", log)
    async with app.open_client():
        for key, ts in first:
            clicks.send_soon(key=key, value=1, timestamp=ts)
        await app.producer.flush()
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: processed[0] == len(first), timeout=60, what="the backlog")
        # stream time reached 11 on each partition: the sessions 0..1.5 closed (1.5 + 2 + 1 < 11),
        # the reminders at 3, 3.75 and 4.5 fired; 13 and 14 are pending
        await wait_for(lambda: len(log["closed"]) == 4, timeout=30, what="the first sessions to close")
        await wait_for(lambda: len(log["fired"]) == 12, timeout=30, what="the due reminders")
        await trio.sleep(1.0)
        assert sorted(k for k, _ in log["closed"]) == [(f"k{i}", (base, base + 1.5)) for i in range(4)]
        assert {v for _, v in log["closed"]} == {3}
        pending = {(t.key, t.when) for t in reminders.timers()}
        assert pending == {(f"k{i}", base + w) for i in range(4) for w in (13.0, 14.0)}
        worker.stop()

    # A new machine: the open sessions and pending timers come back from the changelogs.
    app2, visits2, reminders2, clicks2, processed2 = make_app(
        app_id, kafka_bootstrap, tmp_path / "b", log, table_standby_replicas=0
    )
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        await app2.tables.wait_until_recovery_completed()
        assert {(t.key, t.when) for t in reminders2.timers()} == pending
        assert dict(visits2.table.items()) == {(f"k{i}", (base + 10.0, base + 11.0)): 2 for i in range(4)}
        async with app2.open_client():
            for key, ts in later:
                clicks2.send_soon(key=key, value=1, timestamp=ts)
            await app2.producer.flush()
        await wait_for(lambda: processed2[0] == len(later), timeout=60, what="the later events")
        await wait_for(lambda: len(log["closed"]) == 8, timeout=30, what="the kept sessions to close")
        await wait_for(lambda: len(log["fired"]) == 20, timeout=30, what="the kept reminders")
        await trio.sleep(1.0)
        worker.stop()
    assert sorted(log["closed"]) == sorted(
        [((f"k{i}", (base, base + 1.5)), 3) for i in range(4)]
        + [((f"k{i}", (base + 10.0, base + 11.0)), 2) for i in range(4)]
    )
    expected_fired = [(f"k{i}", base + t + DELAY) for i in range(4) for t in (0.0, 1.5, 0.75, 10.0, 11.0)]
    assert sorted(log["fired"]) == sorted(expected_fired)
