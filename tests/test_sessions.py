"""Session windows on the memory transport, with explicit (out-of-order) event timestamps.

Every result is checked against a reference computed here from the events:
which events are late (older than the running newest timestamp - expires),
and the sessions of the accepted ones (sorted per key, split where two
consecutive times are more than ``gap`` apart).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import streamtrio

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

T0 = 1_700_000_000.0
GAP = 5.0
EXPIRES = 10.0

Session = tuple[str, tuple[float, float]]


def reference(
    events: list[tuple[str, float]], gap: float = GAP, expires: float | None = EXPIRES, idle: float = 0.0
) -> tuple[dict[Session, int], dict[Session, int], int]:
    """(closed sessions, open sessions, late count) after ``events`` on one partition,
    then ``idle`` seconds without events (stream time follows the clock meanwhile)."""
    newest: float | None = None
    accepted: dict[str, list[float]] = {}
    late = 0
    for key, t in events:
        newest = t if newest is None else max(newest, t)
        if expires is not None and t < newest - expires:
            late += 1
            continue
        accepted.setdefault(key, []).append(t)
    sessions: dict[Session, int] = {}
    for key, times in accepted.items():
        times.sort()
        start = prev = times[0]
        count = 0
        for t in times:
            if t - prev > gap:
                sessions[(key, (T0 + start, T0 + prev))] = count
                start, count = t, 0
            prev = t
            count += 1
        sessions[(key, (T0 + start, T0 + prev))] = count
    assert newest is not None
    closed = {
        s: c
        for s, c in sessions.items()
        if expires is not None and s[1][1] - T0 + gap + expires < newest + idle
    }
    return closed, {s: c for s, c in sessions.items() if s not in closed}, late


def session_app(
    app_factory: AppFactory, closed: list[tuple[Any, Any]], **options: Any
) -> tuple[streamtrio.App, streamtrio.Table, streamtrio.SessionWrapper, list[int]]:
    options.setdefault("commit_interval", 0.05)
    expires = options.pop("expires", EXPIRES)
    gap = options.pop("gap", GAP)
    partitions = options.pop("partitions", 1)
    app = app_factory(**options)
    clicks = app.topic("clicks", key_type=str, value_type=int, partitions=partitions)
    table = app.Table(
        "sessions",
        default=int,
        key_type=str,
        value_type=int,
        partitions=partitions,
        on_window_close=lambda key, value: closed.append((key, value)),
    )
    sessions = table.session(gap, expires=expires)
    processed = [0]

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            sessions[event.key] += event.value
            processed[0] += 1

    return app, table, sessions, processed


async def produce(app: streamtrio.App, events: list[tuple[str, float]]) -> None:
    topic = app._topic_named("clicks")
    async with app.open_client():
        for key, offset in events:
            topic.send_soon(key=key, value=1, timestamp=T0 + offset)
        await app.producer.flush()


async def test_a_late_event_bridging_two_sessions_merges_them(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    closed: list[tuple[Any, Any]] = []
    app, table, sessions, processed = session_app(app_factory, closed)
    async with running(app):
        await produce(app, [("a", 0.0), ("a", 8.0), ("b", 1.0)])
        await wait_for(lambda: processed[0] == 3)
        assert sessions.sessions("a") == [((T0, T0), 1), ((T0 + 8, T0 + 8), 1)]
        await produce(app, [("a", 4.0)])  # late (stream time 8) but within 5 s of both
        await wait_for(lambda: processed[0] == 4)
        assert sessions.sessions("a") == [((T0, T0 + 8), 3)]
        assert table.info()["sessions_merged"] == 1
        assert dict(table.items()) == {("a", (T0, T0 + 8)): 3, ("b", (T0 + 1, T0 + 1)): 1}
        # nothing closes before stream time passes end + gap + expires (8 + 5 + 10): at 20,
        # and one second without events later (stream time 21), a is still open
        await produce(app, [("c", 20.0)])
        await wait_for(lambda: processed[0] == 5)
        await trio.sleep(1)
        assert closed == [(("b", (T0 + 1, T0 + 1)), 1)]
        await produce(app, [("c", 23.5), ("a", 2.0)])  # a@2 is late: 2 < 23.5 - 10
        await wait_for(lambda: processed[0] == 7)
        await trio.sleep(1)
        assert closed == [(("b", (T0 + 1, T0 + 1)), 1), (("a", (T0, T0 + 8)), 3)]
        assert sessions.late_dropped == 1
        assert dict(table.items()) == {("c", (T0 + 20, T0 + 23.5)): 2}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sessions_match_the_reference_on_random_out_of_order_events(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    rng = random.Random(seed)
    events: list[tuple[str, float]] = []
    clock = 0.0
    for _ in range(300):
        clock += rng.choice([0.5, 1, 2, 4, 7])
        # mostly in order, some up to 15 s behind (late beyond expires, or bridging)
        t = clock - (rng.random() * 15 if rng.random() < 0.3 else 0)
        events.append((f"k{rng.randrange(5)}", round(t * 4) / 4))
    # two seconds without events after the last: stream time reaches newest + 2.1 (times on a
    # quarter-second grid, so a close point within a poll of it cannot make the test flaky)
    expected_closed, expected_open, late = reference(events, idle=2.1)
    closed: list[tuple[Any, Any]] = []
    app, table, sessions, processed = session_app(app_factory, closed)
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        await trio.sleep(2.1)
        assert len(closed) == len({k for k, _ in closed})  # each session reported once
        assert dict(closed) == expected_closed
        assert dict(table.items()) == expected_open
        assert sessions.late_dropped == late
        assert table.info()["sessions_merged"] > 0  # out-of-order events bridged sessions


async def test_sessions_survive_a_restart_and_recover_from_the_changelog(
    app_factory: AppFactory, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    closed: list[tuple[Any, Any]] = []

    def make(datadir: Path, store: str = "lmdb://") -> Any:
        return session_app(
            app_factory,
            closed,
            store=store,
            datadir=str(datadir),
            lmdb_sync=False,
            table_standby_replicas=0,
        )

    first = [("a", 0.0), ("a", 3.0), ("b", 2.0), ("a", 20.0), ("b", 30.0)]
    app, table, _, processed = make(tmp_path / "a")
    async with running(app):
        await produce(app, first)
        await wait_for(lambda: processed[0] == len(first))
        await trio.sleep(1)
        before = dict(table.items())
    c, o, _ = reference(first)
    assert dict(closed) == c and before == o
    reported = list(closed)

    # another machine rebuilds the open sessions and their close timers from the changelog
    app2, table2, _, _ = make(tmp_path / "b", store="memory://")
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        await trio.sleep(1)
        assert dict(table2.items()) == before
        assert closed == reported

    # the same data dir: a later event bridges a session kept across the restart; each closes once
    second = [("a", 24.0), ("a", 28.0), ("z", 60.0)]
    app3, _table3, sessions3, processed3 = make(tmp_path / "a")
    async with running(app3):
        await app3.tables.wait_until_recovery_completed()
        await produce(app3, second)
        await wait_for(lambda: processed3[0] == len(second))
        await trio.sleep(1)
        assert sessions3.sessions("z") == [((T0 + 60, T0 + 60), 1)]
    c, o, _ = reference(first + second)
    assert dict(closed) == c
    assert len(closed) == len(c)
    assert (("a", (T0 + 20, T0 + 28)), 3) in closed


def test_session_api(app_factory: AppFactory) -> None:
    app = app_factory()
    table = app.Table("s", default=int)
    wrapper = table.session("30s", expires="1m")
    assert (wrapper.window.gap, wrapper.window.expires) == (30.0, 60.0)
    with pytest.raises(streamtrio.ConfigurationError, match="session"):
        table.tumbling(10)
    with pytest.raises(streamtrio.ConfigurationError, match="already windowed"):
        app.Table("w").tumbling(10).table.session(5)
    with pytest.raises(streamtrio.ConfigurationError, match="cannot be windowed"):
        app.GlobalTable("g").session(5)


async def test_sessions_move_to_a_second_worker_and_close_once(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    # Real time here, and stream time follows it on idle partitions (a rebalance leaves them
    # idle for a while): times in thousands of seconds, so the seconds the test lasts move
    # stream time past no close point except those equal to the newest time (idle=1).
    rng = random.Random(5)
    scale = 1000.0
    events: list[tuple[str, float]] = []
    for k in range(16):
        t = 0.0
        while t < 80 * scale:
            events.append((f"k{k}", t))
            t += rng.choice([1.0, 2.0, 7.0, 12.0]) * scale
    events.sort(key=lambda e: e[1])  # in time order: per partition, nothing is late
    closed: list[tuple[Any, Any]] = []
    a, table_a, _, processed_a = session_app(
        app_factory,
        closed,
        partitions=4,
        datadir=str(tmp_path / "a"),
        table_standby_replicas=0,
        gap=GAP * scale,
        expires=EXPIRES * scale,
    )
    b, table_b, _, processed_b = session_app(
        app_factory,
        closed,
        partitions=4,
        datadir=str(tmp_path / "b"),
        table_standby_replicas=0,
        gap=GAP * scale,
        expires=EXPIRES * scale,
    )
    first = [e for e in events if e[1] < 40 * scale]
    second = [e for e in events if e[1] >= 40 * scale]
    async with running(a):
        await produce(a, first)
        await wait_for(lambda: processed_a[0] == len(first))
        await wait_for(lambda: a.tables.statistics().unpersisted == 0)
        async with running(b):
            await wait_for(lambda: table_b.served_partitions() == [2, 3], timeout=30)
            await wait_for(lambda: table_a.served_partitions() == [0, 1], timeout=30)
            await produce(a, second)
            await wait_for(lambda: processed_a[0] + processed_b[0] == len(events))
            await trio.sleep(1)
            still_open = dict(table_a.items()) | dict(table_b.items())
    by_partition: dict[int, list[tuple[str, float]]] = {}
    for key, t in events:
        by_partition.setdefault(table_a.key_partition(key), []).append((key, t))
    expected_closed: dict[Session, int] = {}
    expected_open: dict[Session, int] = {}
    for evs in by_partition.values():
        c, o, late = reference(evs, GAP * scale, EXPIRES * scale, idle=1.0)
        assert late == 0
        expected_closed |= c
        expected_open |= o
    assert len(closed) == len(expected_closed)  # once each, by whichever worker owned it then
    assert dict(closed) == expected_closed
    assert still_open == expected_open


@pytest.mark.parametrize("closed_by", ["events", "idle"])
async def test_kill_9_while_sessions_close_then_restart_reports_each_once_under_exactly_once(
    app_factory: AppFactory, broker: Any, tmp_path: Path, closed_by: str, request: pytest.FixtureRequest
) -> None:
    """closed_by="events": a later event closes every session; "idle": the last ten sessions
    close by the clock on the idle partition, and the kill hits those closes."""
    from typing import cast

    from streamtrio._transports.memory import MemoryConsumer, MemoryProducer

    events = [(f"k{i % 10}", float(i // 10) * 20) for i in range(300)]  # 300 one-event sessions
    before_sentinel = reference(events)
    expected = before_sentinel[0] | before_sentinel[1]
    if closed_by == "events":
        events.append(("sentinel", 10_000.0))  # closes every one of them
        kill_at = 100
    else:
        request.getfixturevalue("autojump_clock")
        kill_at = 295
    scope = trio.CancelScope()
    closes = [0]

    def make(kill_at: int | None) -> streamtrio.App:
        app = app_factory(
            processing_guarantee="exactly_once",
            commit_interval=0.01,
            store="lmdb://",
            datadir=str(tmp_path),
            lmdb_sync=False,
        )
        clicks = app.topic("clicks", key_type=str, value_type=int, partitions=1)
        out = app.topic("closed", key_type=str, value_type=str, partitions=1)

        async def on_close(key: Any, value: Any) -> None:
            out.send_soon(key=key[0], value=f"{key[0]}@{key[1][0]}={value}")
            await trio.sleep(0.02)  # longer than commit_interval
            closes[0] += 1
            if kill_at is not None and closes[0] == kill_at:
                worker = app._worker
                assert worker is not None
                cast(MemoryProducer, worker.producer).kill()
                cast(MemoryConsumer, worker.consumer).kill()
                scope.cancel()

        table = app.Table(
            "s", default=int, key_type=str, value_type=int, partitions=1, on_window_close=on_close
        )
        sessions = table.session(GAP, expires=EXPIRES)

        @app.agent(clicks)
        async def count(stream: streamtrio.Stream[int]) -> None:
            async for event in stream.events():
                sessions[event.key] += event.value

        return app

    app = make(kill_at=kill_at)
    with scope:
        async with running(app):
            await produce(app, events)
            await trio.sleep_forever()

    def outputs() -> list[str]:
        return [cast(bytes, m.value).decode().strip('"') for m in broker.committed_messages("closed", 0)]

    app2 = make(kill_at=None)
    async with running(app2):
        await wait_for(lambda: len(set(outputs())) == len(expected), timeout=60)
        await trio.sleep(0.5)
    assert closes[0] > len(expected)  # the killed run's last closes ran, and were not committed...
    assert len(outputs()) == len(expected)  # ...so none is reported twice
    assert set(outputs()) == {f"{k}@{start}={v}" for (k, (start, _)), v in expected.items()}


async def test_a_session_closes_on_an_idle_partition_after_gap_plus_expires_of_clock_time(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    closed: list[tuple[Any, Any]] = []
    app, table, sessions, processed = session_app(app_factory, closed)
    async with running(app):
        await produce(app, [("a", 0.0), ("a", 2.0), ("b", 4.0)])
        await wait_for(lambda: processed[0] == 3)
        start = trio.current_time()
        # a closes once stream time passes 2 + 5 + 10 = 17: 13 s of idle clock after b@4
        await trio.sleep(12.5)
        assert closed == []
        await wait_for(lambda: len(closed) == 1, timeout=1.0)
        assert closed == [(("a", (T0, T0 + 2)), 2)]
        assert 13 <= trio.current_time() - start < 13.1
        await wait_for(lambda: len(closed) == 2, timeout=2.1)  # b: 4 + 15 = 19
        assert closed[1] == (("b", (T0 + 4, T0 + 4)), 1)
        assert dict(table.items()) == {}
        assert table.stream_time(0) is not None and table.stream_time(0) >= T0 + 19  # type: ignore[operator]
        # the clock moved stream time: an event for the closed session is late, not a reopening
        await produce(app, [("a", 3.0), ("c", 30.0)])
        await wait_for(lambda: processed[0] == 5)
        assert sessions.late_dropped == 1
        assert sessions.sessions("a") == []
        await trio.sleep(20)
        assert closed[2:] == [(("c", (T0 + 30, T0 + 30)), 1)]


async def test_a_busy_partition_does_not_close_sessions_by_the_clock(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """An event in flight holds the partition's stream time: only timestamps move it then."""
    closed: list[tuple[Any, Any]] = []
    app = app_factory(commit_interval=0.05)
    clicks = app.topic("clicks", key_type=str, value_type=int, partitions=1)
    table = app.Table(
        "sessions",
        default=int,
        key_type=str,
        value_type=int,
        partitions=1,
        on_window_close=lambda key, value: closed.append((key, value)),
    )
    sessions = table.session(GAP, expires=EXPIRES)
    gate = trio.Event()
    processed = [0]

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            sessions[event.key] += 1
            if event.key == "hold":
                await gate.wait()
            processed[0] += 1

    async with running(app):
        await produce(app, [("a", 0.0), ("hold", 1.0)])
        await wait_for(lambda: processed[0] == 1)
        await trio.sleep(60)  # "hold" is in flight all along
        assert closed == []
        gate.set()
        await wait_for(lambda: processed[0] == 2)
        start = trio.current_time()
        await wait_for(lambda: len(closed) == 1, timeout=20)
        # idle from here (seen at the next check, within table_cleanup_interval): a (close
        # point 15) needs 14 s of clock after stream time 1
        assert 14 <= trio.current_time() - start <= 15.01
        assert closed == [(("a", (T0, T0)), 1)]
