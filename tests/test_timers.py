"""Durable per-key timers (``table.schedule`` / ``@table.on_timer``) on the memory transport.

What fires and when is checked against a reference computed here from the
events (a timer at ``when`` fires once the newest event timestamp of its
partition reaches it), never from the timer service's own state.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker, MemoryConsumer, MemoryProducer

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

T0 = 1_700_000_000.0
DELAY = 10.0


def timer_app(
    app_factory: AppFactory,
    *,
    partitions: int = 1,
    clock: str = "event",
    on_fire: Callable[[streamtrio.KeyTimer], None] | None = None,
    **options: Any,
) -> tuple[streamtrio.App, streamtrio.Table, list[tuple[str, float, Any]], list[int]]:
    """Each event ``(key, t)`` counts into ``seen`` and schedules a timer for ``key`` at ``t + DELAY``."""
    options.setdefault("commit_interval", 0.05)
    app = app_factory(**options)
    clicks = app.topic("clicks", key_type=str, value_type=int, partitions=partitions)
    out = app.topic("fired", key_type=str, value_type=str, partitions=partitions)
    seen = app.Table("seen", default=int, key_type=str, value_type=int, partitions=partitions)
    fired: list[tuple[str, float, Any]] = []
    processed = [0]

    @seen.on_timer
    async def on_timer(timer: streamtrio.KeyTimer) -> None:
        fired.append((timer.key, timer.when, timer.value))
        seen[f"fired:{timer.key}"] += 1  # a table write inside the firing
        out.send_soon(key=timer.key, value=f"{timer.key}@{timer.when}")
        if on_fire is not None:
            on_fire(timer)

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            seen[event.key] += 1
            when = event.message.timestamp + DELAY if clock == "event" else T0 + event.value
            seen.schedule(event.key, when, event.value, clock=clock)  # type: ignore[arg-type]
            processed[0] += 1

    return app, seen, fired, processed


async def produce(app: streamtrio.App, events: list[tuple[str, float, int]], partitions: int = 1) -> None:
    feeder = streamtrio.App(
        "feeder", broker=app.conf.broker, store="memory://", web_enabled=False, datadir=app.conf.datadir
    )
    topic = feeder.topic("clicks", key_type=str, value_type=int, partitions=partitions)
    async with feeder.open_client():
        for key, offset, value in events:
            topic.send_soon(key=key, value=value, timestamp=T0 + offset)
        await feeder.producer.flush()


def due(events: list[tuple[str, float, int]]) -> set[tuple[str, float, int]]:
    """The timers a single partition owes: stream time = the newest event time so far."""
    newest = max(t for _, t, _ in events)
    return {(k, T0 + t + DELAY, v) for k, t, v in events if t + DELAY <= newest}


async def test_event_time_timers_fire_once_when_stream_time_passes_them(
    app_factory: AppFactory, broker: MemoryBroker, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(7)
    # out-of-order timestamps, several timers per key, duplicates of (key, when)
    events = [(f"k{rng.randrange(4)}", float(rng.randrange(0, 60)), i) for i in range(80)]
    app, seen, fired, processed = timer_app(app_factory)
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        await trio.sleep(5)
        # the same (key, when) scheduled twice is one timer, with the last value written
        last: dict[tuple[str, float], int] = {}
        for k, t, v in events:
            last[(k, T0 + t + DELAY)] = v
        newest = max(t for _, t, _ in events)
        expected = {(k, w, v) for (k, w), v in last.items() if w <= T0 + newest}
        assert sorted(fired) == sorted(expected)
        assert len(fired) == len(expected)
        # the rest are pending, and nothing fires without newer events
        pending = {(t.key, t.when, t.value) for t in seen.timers()}
        assert pending == {(k, w, v) for (k, w), v in last.items() if w > T0 + newest}
        assert seen.stream_time(0) == T0 + newest
        await trio.sleep(60)
        assert len(fired) == len(expected)
        # the firings' table writes and sink messages are there
        for key in {k for k, _, _ in expected}:
            assert seen[f"fired:{key}"] == sum(1 for k, _, _ in fired if k == key)
        await wait_for(lambda: app.tables.statistics().unpersisted == 0)
        # timers and the stream time are stored in the table but never listed or counted
        keys = {k for k, _, _ in events} | {f"fired:{k}" for k, _, _ in expected}
        assert set(seen.keys()) == keys
        assert len(seen) == len(keys)
    assert sorted(m.value for m in broker.messages("fired", 0)) == sorted(
        f'"{k}@{w}"'.encode() for k, w, _ in expected
    )
    # fired timers left no key behind: only table keys, the stream time and pending timers
    assert seen.info()["timers_fired"] == len(expected)


async def test_wall_clock_timers_fire_on_time_without_events(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    fired_at: dict[str, float] = {}
    app, seen, fired, processed = timer_app(
        app_factory,
        clock="wall",
        on_fire=lambda timer: fired_at.setdefault(timer.key, cast(Any, seen)._timers.wall_time()),
    )
    async with running(app):
        timers = seen._timers
        assert timers is not None
        now = timers.wall_time()
        # the event's value is the firing time, relative to T0: 30 s and 90 s from now
        offset = now - T0
        await produce(app, [("a", 0.0, round(offset + 30)), ("b", 0.0, round(offset + 90))])
        await wait_for(lambda: processed[0] == 2)
        assert fired == []
        await trio.sleep(40)
        assert [k for k, _, _ in fired] == ["a"]
        await trio.sleep(60)
        assert [k for k, _, _ in fired] == ["a", "b"]
    for key, when, _ in fired:
        # on time (within the tick of the service, which sleeps until the next timer)
        assert when <= fired_at[key] <= when + 0.01


async def test_a_restarted_worker_keeps_pending_timers_and_fires_each_once(
    app_factory: AppFactory, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fired_all: list[tuple[str, float, Any]] = []

    def make(datadir: Path, store: str = "lmdb://") -> Any:
        app, seen, fired, processed = timer_app(
            app_factory,
            on_fire=lambda t: fired_all.append((t.key, t.when, t.value)),
            store=store,
            datadir=str(datadir),
            lmdb_sync=False,
            table_standby_replicas=0,
        )
        return app, seen, fired, processed

    first = [("a", 0.0, 1), ("b", 5.0, 2), ("a", 12.0, 3), ("c", 30.0, 4)]
    app, _seen, fired, processed = make(tmp_path / "a")
    async with running(app):
        await produce(app, first)
        await wait_for(lambda: processed[0] == len(first))
        await wait_for(lambda: len(fired) == 3)
        await trio.sleep(1)
    assert sorted(fired) == sorted(due(first))
    pending = {("c", T0 + 40.0, 4)}

    # Another machine (fresh store) recovers the pending timer and the stream time from the changelog.
    app2, seen2, fired2, _ = make(tmp_path / "b", store="memory://")
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        await trio.sleep(2)
        assert {(t.key, t.when, t.value) for t in seen2.timers()} == pending
        assert seen2.stream_time(0) == T0 + 30.0
        assert fired2 == []

    # The same data dir: nothing fires again; a newer event fires the pending one, once.
    app3, seen3, fired3, processed3 = make(tmp_path / "a")
    async with running(app3):
        await app3.tables.wait_until_recovery_completed()
        await trio.sleep(2)
        assert fired3 == []
        await produce(app3, [("d", 45.0, 5)])
        await wait_for(lambda: processed3[0] == 1)
        await wait_for(lambda: len(fired3) == 1)
        await trio.sleep(2)
        assert fired3 == [("c", T0 + 40.0, 4)]
        assert seen3["fired:a"] == 2 and seen3["fired:c"] == 1
    assert sorted(fired_all) == sorted(due([*first, ("d", 45.0, 5)]))


async def test_a_pending_wall_clock_timer_survives_a_restart_and_fires_once(
    app_factory: AppFactory, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    def make() -> Any:
        return timer_app(app_factory, clock="wall", store="lmdb://", datadir=str(tmp_path), lmdb_sync=False)

    app, seen, fired, processed = make()
    async with running(app):
        assert seen._timers is not None
        when = round(seen._timers.wall_time() + 600)
        await produce(app, [("a", 0.0, when - round(T0))])
        await wait_for(lambda: processed[0] == 1)
        await trio.sleep(1)
        assert [t.key for t in seen.timers()] == ["a"]
    assert fired == []
    app2, seen2, fired2, _ = make()
    async with running(app2):
        # no event comes: the restarted worker fires it when its clock reaches it
        assert seen2._timers is not None
        await wait_for(lambda: len(fired2) == 1, timeout=700, poll=1.0)
        assert seen2._timers.wall_time() >= when
        assert fired2 == [("a", float(when), when - round(T0))]
        await trio.sleep(1)
        assert seen2.timers() == []
        await trio.sleep(60)
        assert len(fired2) == 1


# -- exactly once: a kill -9 while timers fire -----------------------------------------------


def kill(worker: streamtrio.Worker, scope: trio.CancelScope) -> None:
    cast(MemoryProducer, worker.producer).kill()
    if worker.consumer is not None:
        cast(MemoryConsumer, worker.consumer).kill()
    scope.cancel()


@pytest.mark.parametrize("partitions", [1, 3])
async def test_kill_9_while_timers_fire_then_restart_is_exact_under_exactly_once(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path, partitions: int
) -> None:
    total = 3000
    events = [(f"k{i % 50}", float(i), i) for i in range(total)]  # in order: timer i is due at event i + 10
    scope = trio.CancelScope()
    calls = [0]

    def on_fire(_timer: streamtrio.KeyTimer) -> None:
        calls[0] += 1
        if calls[0] == total // 3:
            worker = app._worker
            assert worker is not None
            kill(worker, scope)

    options: dict[str, Any] = {
        "processing_guarantee": "exactly_once",
        "commit_interval": 0.02,
        "store": "lmdb://",
        "datadir": str(tmp_path),
        "lmdb_sync": False,
        "partitions": partitions,
    }
    app, _, _, _ = timer_app(app_factory, on_fire=on_fire, **options)
    with scope:
        async with running(app):
            await produce(app, events, partitions)
            await trio.sleep_forever()

    app2, seen2, _, _processed2 = timer_app(app_factory, **options)
    ends = {TP("clicks", p): broker.end_offset(TP("clicks", p)) for p in range(partitions)}
    ends = {tp: end for tp, end in ends.items() if end}
    async with running(app2):
        await wait_for(lambda: broker.committed(app2.id) == ends, timeout=60)
        await trio.sleep(0.5)
        await wait_for(lambda: broker.committed(app2.id) == ends, timeout=60)
        pending = {(t.key, t.when) for t in seen2.timers()}
        counts = {k: v for k, v in seen2.items() if k.startswith("fired:")}
        per_key = {k: v for k, v in seen2.items() if not k.startswith("fired:")}
    assert per_key == Counter(k for k, _, _ in events)  # the events' own writes: exactly once
    # What a read_committed reader sees: each due timer fired exactly once.
    outputs = [cast(bytes, m.value) for p in range(partitions) for m in broker.committed_messages("fired", p)]
    by_partition: dict[int, list[tuple[str, float, int]]] = {}
    feeder_keys = streamtrio.App("k", broker="memory://", store="memory://", web_enabled=False)
    part_of = feeder_keys.topic("x", key_type=str, partitions=partitions)
    for k, t, v in events:
        by_partition.setdefault(_partition(part_of, k, partitions), []).append((k, t, v))
    expected = set().union(*(due(evs) for evs in by_partition.values()))
    assert len(outputs) == len(set(outputs))  # no firing visible twice
    assert {o.decode().strip('"') for o in outputs} == {f"{k}@{w}" for k, w, _ in expected}
    assert pending == {(k, T0 + t + DELAY) for k, t, v in events} - {(k, w) for k, w, _ in expected}
    fired_per_key: dict[str, int] = {}
    for k, _, _ in expected:
        fired_per_key[f"fired:{k}"] = fired_per_key.get(f"fired:{k}", 0) + 1
    assert counts == fired_per_key


def _partition(topic: streamtrio.Topic[Any], key: str, partitions: int) -> int:
    from streamtrio._partitioner import partition_for_key

    raw = topic.schema.dumps_key(key)
    assert raw is not None
    return partition_for_key(raw, partitions)


async def test_schedule_needs_an_on_timer_callback_and_global_tables_have_none(
    app_factory: AppFactory,
) -> None:
    app = app_factory()
    table = app.Table("plain")
    with pytest.raises(streamtrio.ConfigurationError, match="on_timer"):
        table.schedule("k", T0)
    with pytest.raises(streamtrio.ConfigurationError, match="cannot have timers"):
        app.GlobalTable("g").on_timer(lambda timer: None)


async def test_a_window_close_and_its_deletion_are_in_one_transaction_under_exactly_once(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    """on_window_close awaits past commits; a kill -9 after some closes never shows one twice."""
    windows = 40
    scope = trio.CancelScope()
    closes = [0]

    def make(kill_at: int | None) -> tuple[streamtrio.App, list[int]]:
        app = app_factory(
            processing_guarantee="exactly_once",
            commit_interval=0.01,
            table_cleanup_interval=0.05,
            store="lmdb://",
            datadir=str(tmp_path),
            lmdb_sync=False,
        )
        clicks = app.topic("clicks", key_type=str, value_type=int, partitions=1)
        out = app.topic("closed", key_type=str, value_type=str, partitions=1)

        async def on_close(key: Any, value: Any) -> None:
            out.send_soon(key=key[0], value=f"{key[1][0]}")
            await trio.sleep(0.03)  # longer than commit_interval: a commit comes meanwhile
            closes[0] += 1
            if kill_at is not None and closes[0] == kill_at:
                kill(app._worker, scope)  # type: ignore[arg-type]

        table = app.Table(
            "w", default=int, key_type=str, value_type=int, partitions=1, on_window_close=on_close
        )
        windowed = table.tumbling(1.0, expires=0.0)
        processed = [0]

        @app.agent(clicks)
        async def count(stream: streamtrio.Stream[int]) -> None:
            async for event in stream.events():
                windowed[event.key] += 1
                processed[0] += 1

        return app, processed

    app, _ = make(kill_at=windows // 2)
    with scope:
        async with running(app):
            # old timestamps, one window each; the last event's stream time closes all but the last
            await produce(app, [("k", float(i), 1) for i in range(windows)] + [("k", windows + 5.0, 1)])
            await trio.sleep_forever()

    def outputs() -> list[str]:
        return [cast(bytes, m.value).decode() for m in broker.committed_messages("closed", 0)]

    app2, _ = make(kill_at=None)
    async with running(app2):
        # every window closes, the last one once stream time follows the clock (idle partition)
        await wait_for(lambda: len(set(outputs())) == windows + 1, timeout=60)
        await trio.sleep(0.5)
    assert len(outputs()) == windows + 1  # none reported twice


async def test_timers_move_with_their_partitions_to_a_second_worker(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    fired: list[tuple[str, str, float]] = []

    def make(name: str) -> Any:
        return timer_app(
            app_factory,
            partitions=4,
            on_fire=lambda t: fired.append((name, t.key, t.when)),
            datadir=str(tmp_path / name),
            table_standby_replicas=0,
        )

    first = [(f"k{i % 20}", float(i), i) for i in range(60)]  # timers at 10 .. 69
    second = [(f"k{i}", 100.0, 0) for i in range(20)]  # every partition's stream time passes them all
    a, seen_a, _, processed_a = make("a")
    b, seen_b, _, processed_b = make("b")
    async with running(a):
        await produce(a, first, 4)
        await wait_for(lambda: processed_a[0] == len(first))
        await wait_for(lambda: a.tables.statistics().unpersisted == 0)
        fired_before = list(fired)
        pending_before = {(t.key, t.when) for t in seen_a.timers()}
        assert pending_before  # some are left for the second worker
        async with running(b):
            await wait_for(lambda: seen_b.served_partitions() == [2, 3], timeout=30)
            await wait_for(lambda: seen_a.served_partitions() == [0, 1], timeout=30)
            moved = {(t.key, t.when) for t in seen_b.timers()}
            assert moved and moved <= pending_before  # b recovered them from the changelog
            assert {(t.key, t.when) for t in seen_a.timers()} == pending_before - moved
            await produce(a, second, 4)
            await wait_for(lambda: processed_a[0] + processed_b[0] == len(first) + len(second))
            await wait_for(lambda: len(fired) == len(first))
            await trio.sleep(0.5)
    assert sorted((k, w) for _, k, w in fired) == sorted((k, T0 + t + DELAY) for k, t, _ in first)
    assert {(k, w) for who, k, w in fired[len(fired_before) :] if who == "b"} == moved
