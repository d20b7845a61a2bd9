"""Windowed tables on the memory transport, under MockClock, with explicit event timestamps.

Every count is checked against a reference computed here from the events
themselves (brute force over window starts), never from the table's own code.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import streamtrio
from streamtrio._tables.windowed import STREAM_TIME_KEY, split_window_key
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

#: An epoch that is a multiple of every window size used here.
T0 = 1_700_000_000.0
NAME = "per_window"
CHANGELOG = f"testapp-{NAME}-changelog"

Range = tuple[float, float]


# -- references (independent of the implementation) ---------------------------------------


def windows_containing(t: float, size: float, step: float) -> list[Range]:
    """Every [k*step, k*step + size) containing the epoch time t, by brute force over k."""
    k_lo = math.floor((t - size) / step) - 2
    k_hi = math.floor(t / step) + 2
    return [(k * step, k * step + size) for k in range(k_lo, k_hi + 1) if k * step <= t < k * step + size]


def reference_counts(events: list[tuple[str, float]], size: float, step: float) -> dict[Any, int]:
    counts: Counter[Any] = Counter()
    for key, offset in events:
        for window in windows_containing(T0 + offset, size, step):
            counts[(key, window)] += 1
    return dict(counts)


def sliding_reference(events: list[tuple[str, float]], before: float, after: float) -> dict[Any, int]:
    """One window per distinct (key, event time u): the events with u - before <= t <= u + after."""
    result = {}
    for key, u in set(events):
        result[(key, (T0 + u - before, T0 + u + after))] = sum(
            1 for k, t in events if k == key and u - before <= t <= u + after
        )
    return result


# -- helpers ---------------------------------------------------------------------------------


def windowed_app(
    app_factory: AppFactory,
    make_window: Callable[[streamtrio.Table], streamtrio.WindowWrapper],
    *,
    on_close: Callable[[Any, Any], Any] | None = None,
    partitions: int = 1,
    **options: Any,
) -> tuple[streamtrio.App, streamtrio.Table, streamtrio.WindowWrapper, list[int]]:
    options.setdefault("commit_interval", 0.05)
    options.setdefault("table_cleanup_interval", 0.5)
    app = app_factory(**options)
    clicks = app.topic("clicks", key_type=str, value_type=int, partitions=partitions)
    table = app.Table(
        NAME, default=int, key_type=str, value_type=int, partitions=partitions, on_window_close=on_close
    )
    windowed = make_window(table)
    processed = [0]

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            windowed[event.key] += event.value
            processed[0] += 1

    return app, table, windowed, processed


async def produce(app: streamtrio.App, events: list[tuple[str, float]]) -> None:
    topic = app._topic_named("clicks")
    async with app.open_client():
        for key, offset in events:
            topic.send_soon(key=key, value=1, timestamp=T0 + offset)
        await app.producer.flush()


def stored(table: streamtrio.Table) -> dict[bytes, bytes]:
    """The committed store contents of every served partition."""
    return {
        raw: value
        for n in table.served_partitions()
        for raw, value in table._parts[n].view.items()  # type: ignore[union-attr]
    }


def changelog(broker: MemoryBroker) -> dict[bytes, bytes | None]:
    """The latest changelog record per key (what compaction keeps)."""
    latest: dict[bytes, bytes | None] = {}
    for p in range(broker.topics()[CHANGELOG]):
        for message in broker.messages(CHANGELOG, p):
            assert message.key is not None
            latest[message.key] = message.value
    return latest


async def persisted(app: streamtrio.App) -> None:
    await wait_for(lambda: app.tables.statistics().unpersisted == 0)


# -- window types ----------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "step"), [(10, 10), (10, 5), (10, 3), (4, 6), (0.5, 0.25)])
def test_hopping_and_tumbling_ranges_match_brute_force(size: float, step: float) -> None:
    window = streamtrio.TumblingWindow(size) if size == step else streamtrio.HoppingWindow(size, step)
    rng = random.Random(size * 100 + step)
    stamps = [k * step for k in range(-5, 40)] + [k * step - 0.25 for k in range(40)]
    stamps += [rng.randrange(-2000, 20000) / 4 for _ in range(500)]
    for t in stamps:
        expected = windows_containing(T0 + t, size, step)
        assert window.ranges(T0 + t) == expected, t
        if expected:
            assert window.current(T0 + t) == expected[-1]
            assert window.earliest(T0 + t) == expected[0]


def test_a_boundary_timestamp_is_in_exactly_one_tumbling_window() -> None:
    window = streamtrio.TumblingWindow("1m")
    assert window.size == 60.0
    minute = 28_333_334 * 60.0
    assert window.ranges(minute) == [(minute, minute + 60)]
    assert window.ranges(minute - 0.001) == [(minute - 60, minute)]
    assert window.ranges(minute + 59.999) == [(minute, minute + 60)]
    # negative and fractional times are exact too
    assert streamtrio.TumblingWindow(0.1).ranges(0.3) == [(0.3, 0.4)]
    assert streamtrio.TumblingWindow(10).ranges(-0.5) == [(-10.0, 0.0)]


def test_sizes_accept_seconds_timedelta_and_strings() -> None:
    assert streamtrio.HoppingWindow(timedelta(minutes=2), "30s", expires="1h").size == 120.0
    assert streamtrio.HoppingWindow(timedelta(minutes=2), "30s", expires="1h").step == 30.0
    assert streamtrio.HoppingWindow(timedelta(minutes=2), "30s", expires="1h").expires == 3600.0
    sliding = streamtrio.SlidingWindow("5s", 2, expires=timedelta(seconds=10))
    assert (sliding.before, sliding.after, sliding.expires) == (5.0, 2.0, 10.0)
    assert sliding.ranges(T0) == [(T0 - 5, T0 + 2)]
    with pytest.raises(streamtrio.ConfigurationError):
        streamtrio.TumblingWindow(0)
    with pytest.raises(streamtrio.ConfigurationError):
        streamtrio.TumblingWindow("soon")


def test_window_api_on_tables(app_factory: AppFactory) -> None:
    app = app_factory()
    table = app.Table("t", default=int)
    wrapper = table.tumbling("1m", expires="1h", key_index=True)
    assert isinstance(wrapper.window, streamtrio.TumblingWindow)
    assert table.window is wrapper.window
    assert wrapper.relative_to_now().window is wrapper.window
    with pytest.raises(streamtrio.ConfigurationError, match="already windowed"):
        table.hopping(10, 5)
    with pytest.raises(streamtrio.ConfigurationError, match="cannot be windowed"):
        app.GlobalTable("g").tumbling(10)


# -- tumbling: counts, close on time, tombstones, late events ---------------------------------


async def test_tumbling_counts_close_once_in_order_without_new_events(
    app_factory: AppFactory, broker: MemoryBroker, autojump_clock: trio.testing.MockClock
) -> None:
    closed: list[tuple[Any, Any, float]] = []

    def on_close(key: Any, value: Any) -> None:  # a sync callback
        closed.append((key, value, trio.current_time()))

    app, table, windowed, processed = windowed_app(
        app_factory, lambda t: t.tumbling(10, expires=20), on_close=on_close
    )
    # boundaries (0, 10, 20 exactly; 9.75 just below) and out-of-order events within expiry
    events = [
        ("a", 0.0),
        ("a", 5.0),
        ("b", 9.75),
        ("a", 10.0),
        ("b", 10.0),
        ("a", 15.5),
        ("a", 3.0),
        ("b", 20.0),
        ("a", 12.25),
        ("a", 25.0),
        ("b", 1.0),
    ]
    expected = reference_counts(events, 10, 10)
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        assert dict(table.items()) == expected
        assert closed == []
        last_event_at = trio.current_time()

        # No event comes any more: the windows close as the wall clock moves stream time on.
        await trio.sleep(60)
        assert [(key, value) for key, value, _ in closed] == sorted(
            expected.items(), key=lambda kv: (kv[0][1][1], kv[0][1][0], kv[0][0])
        )
        for _key, (_start, end), _value, at in ((k[0], k[1], v, at) for k, v, at in closed):
            # closed once stream time (25.0 at the last event) reached end + expires,
            # within one cleanup interval
            due = last_event_at + (end + 20 - (T0 + 25.0))
            assert due - 0.1 <= at <= due + 0.5 + 0.1
        assert dict(table.items()) == {}
        await persisted(app)
        # gone from the store (only the stream-time key is left), tombstoned in the changelog
        assert set(stored(table)) == {STREAM_TIME_KEY}
        latest = changelog(broker)
        window_keys = {raw for raw in latest if split_window_key(raw) is not None}
        assert len(window_keys) == len(expected)
        assert all(latest[raw] is None for raw in window_keys)

        # Late events for closed windows are dropped and counted, not merged.
        await produce(app, [("a", 3.0), ("b", 15.0)])
        await wait_for(lambda: processed[0] == len(events) + 2)
        assert windowed.late_dropped == 2
        assert table.info()["late_events_dropped"] == 2
        assert dict(table.items()) == {}
        await trio.sleep(60)
        assert len(closed) == len(expected)
        assert table.info()["windows_closed"] == len(expected)


async def test_backlog_with_old_timestamps_is_not_late(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    closed: dict[Any, Any] = {}

    async def on_close(key: Any, value: Any) -> None:  # an async callback
        await trio.lowlevel.checkpoint()
        assert key not in closed
        closed[key] = value

    rng = random.Random(7)
    # 2,000 events over 500 s of event time, a day old, jittered by up to 4 s (< expires)
    events = [(f"k{i % 5}", -86_400 + i / 4 + rng.randrange(0, 16) / 4) for i in range(2000)]
    expected = reference_counts(events, 10, 10)
    app, _table, windowed, processed = windowed_app(
        app_factory, lambda t: t.tumbling(10, expires=5), on_close=on_close, partitions=2
    )
    await produce(app, events)  # the backlog waits on the broker before the worker starts
    async with running(app):
        await wait_for(lambda: processed[0] == len(events))
        await trio.sleep(30)
        assert windowed.late_dropped == 0
        assert closed == expected


# -- hopping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "step"), [(10, 5), (10, 2.5), (6, 4)])
async def test_hopping_counts_against_reference(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock, size: float, step: float
) -> None:
    rng = random.Random(size * step)
    events = [(f"k{rng.randrange(6)}", rng.randrange(0, 400) / 4) for _ in range(600)]
    events += [("k0", k * step) for k in range(10)]  # window boundaries
    expected = reference_counts(events, size, step)
    app, table, windowed, processed = windowed_app(
        app_factory, lambda t: t.hopping(size, step, key_index=True), partitions=4
    )
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        assert dict(table.items()) == expected
        # every event updated each window containing it
        assert sum(table.values()) == sum(len(windows_containing(T0 + t, size, step)) for _, t in events)
        assert sorted(windowed.keys()) == sorted({k for k, _ in events})
        for t in (0.0, 7.25, 50.0, 99.75):
            at = windowed.relative_to(T0 + t)
            latest = windows_containing(T0 + t, size, step)[-1]
            for key in ("k0", "k3"):
                assert at[key].value() == expected.get((key, latest), 0)
            # items(): one value per key, of the current window at that time
            assert dict(at.items()) == {key: value for (key, w), value in expected.items() if w == latest}
        # delta(d): the current window d seconds earlier
        at = windowed.relative_to(T0 + 50.0)
        earlier = windows_containing(T0 + 50.0 - step, size, step)[-1]
        assert at["k1"].delta(step) == expected.get(("k1", earlier), 0)


# -- sliding ------------------------------------------------------------------------------------


async def test_sliding_counts_and_close_against_reference(
    app_factory: AppFactory, broker: MemoryBroker, autojump_clock: trio.testing.MockClock
) -> None:
    closed: list[tuple[Any, Any]] = []
    before, after = 5.0, 2.0
    rng = random.Random(3)
    events = [(f"k{rng.randrange(3)}", rng.randrange(0, 200) / 4) for _ in range(300)]
    events += [("k0", 60.0), ("k0", 65.0), ("k0", 67.0), ("k0", 58.0)]  # exactly on both edges
    events.sort(key=lambda e: e[1] + rng.randrange(0, 8) / 4)  # out of order, within expiry
    expected = sliding_reference(events, before, after)

    app, table, windowed, processed = windowed_app(
        app_factory,
        lambda t: t.using_window(streamtrio.SlidingWindow(before, after, expires=10)),
        on_close=lambda key, value: closed.append((key, value)),
    )
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        # reads while the last windows are still open
        for (key, (lo, _hi)), want in expected.items():
            u = lo - T0 + before
            if u > 50:
                assert windowed.relative_to(T0 + u)[key].value() == want, (key, u)
        await trio.sleep(60)
        assert dict(closed) == expected
        assert len(closed) == len(expected)  # each window once
        ends = [key[1][1] for key, _ in closed]
        assert ends == sorted(ends)
        await persisted(app)
        assert set(stored(table)) == {STREAM_TIME_KEY}
        latest = changelog(broker)
        assert all(v is None for raw, v in latest.items() if raw != STREAM_TIME_KEY)


# -- time relativity ------------------------------------------------------------------------------


class Reading(streamtrio.Record):
    sensor: str
    at: datetime


async def test_relative_to_field_now_and_current(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = app_factory(commit_interval=0.05)
    readings = app.topic("readings", key_type=str, value_type=Reading, partitions=1)
    by_field = app.Table("by_field", default=int, partitions=1).tumbling(10).relative_to_field(Reading.at)
    by_now = app.Table("by_now", default=int, partitions=1).tumbling(10).relative_to_now()
    seen: list[tuple[Any, Any, Any]] = []

    @app.agent(readings)
    async def count(stream: streamtrio.Stream[Reading]) -> None:
        async for reading in stream:
            by_field[reading.sensor] += 1
            by_now[reading.sensor] += 1
            ws = by_field[reading.sensor]
            # value(): at the field's time; current(): at the message timestamp
            seen.append((ws.value(), ws.current(), by_now[reading.sensor].now()))

    field_times = [T0 + 3, T0 + 7, T0 + 12]
    async with running(app), app.open_client():
        started = by_now.wall_time()
        for at in field_times:
            await readings.send(
                key="s", value=Reading(sensor="s", at=datetime.fromtimestamp(at, UTC)), timestamp=T0 + 500
            )
        await wait_for(lambda: len(seen) == 3)
        assert by_field.relative_to(T0)["s"].value() == 2
        assert by_field.relative_to(T0 + 10)["s"].value() == 1
        assert by_field.relative_to(T0 + 500)["s"].value() == 0
        assert seen == [(1, 0, 1), (2, 0, 2), (1, 0, 3)]
        # relative_to_now: the wall clock is time.time() at start + trio time since
        start = math.floor(started / 10) * 10
        assert dict(by_now.table.items()) == {("s", (start, start + 10)): 3}
        await trio.sleep(20)
        assert by_now.wall_time() == pytest.approx(started + 20, abs=0.5)
        assert by_now["s"].now() == 0


async def test_relative_to_stream_outside_an_event_is_an_error(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = app_factory()
    windowed = app.Table("t", default=int, partitions=1).tumbling(10).relative_to_stream()
    async with running(app):
        with pytest.raises(streamtrio.TableError, match="no event is being processed"):
            windowed["k"] += 1


# -- restart -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tumbling", "sliding"])
async def test_restart_keeps_windows_and_reports_each_close_once(
    app_factory: AppFactory,
    broker: MemoryBroker,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    kind: str,
) -> None:
    closed: list[tuple[Any, Any]] = []
    events = [(f"k{i % 3}", i * 1.25) for i in range(48)]  # 0 .. 58.75
    if kind == "tumbling":
        expected = reference_counts(events, 10, 10)
        late = 35.0  # window [30, 40) closed at stream time 55; the newest stored window starts at 50
    else:
        expected = sliding_reference(events, 5, 0)
        late = 45.0  # older than stream time - expires only by the stored stream time (60+)

    def make(datadir: Path, store: str = "lmdb://") -> Any:
        return windowed_app(
            app_factory,
            (lambda t: t.tumbling(10, expires=15))
            if kind == "tumbling"
            else (lambda t: t.using_window(streamtrio.SlidingWindow(5, 0, expires=15))),
            on_close=lambda key, value: closed.append((key, value)),
            store=store,
            datadir=str(datadir),
            lmdb_sync=False,
            table_standby_replicas=0,
        )

    app, table, _, processed = make(tmp_path / "a")
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        await trio.sleep(2)  # stream time about 60.75: windows ending at 45 and before close
        assert 0 < len(closed) < len(expected)
        before = dict(table.items())
        first = list(closed)
    if kind == "tumbling":
        assert before == {k: v for k, v in expected.items() if k not in dict(first)}

    # A fresh store (another machine) recovers the same windows from the changelog.
    app2, table2, _, _ = make(tmp_path / "b", store="memory://")
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        assert dict(table2.items()) == before
        assert closed == first

    # The same data dir: same values; closed windows are not reported again, and
    # late events for them are still dropped (the stream time was stored).
    app3, table3, windowed3, processed3 = make(tmp_path / "a")
    async with running(app3):
        await app3.tables.wait_until_recovery_completed()
        assert dict(table3.items()) == before
        await produce(app3, [("k0", late)])
        await wait_for(lambda: processed3[0] == 1)
        assert windowed3.late_dropped == 1
        await trio.sleep(60)
    assert sorted(closed) == sorted(expected.items())
    assert len(closed) == len(expected)


# -- grace: final at end + grace, kept until end + expires -------------------------------------


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding"])
async def test_grace_reports_each_window_once_at_end_plus_grace_and_keeps_it_until_expires(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    closed: list[tuple[Any, Any]] = []
    if kind == "tumbling":
        make: Callable[[streamtrio.Table], streamtrio.WindowWrapper] = lambda t: t.tumbling(  # noqa: E731
            10, expires=100, grace=5
        )
    elif kind == "hopping":
        make = lambda t: t.hopping(10, 5, expires=100, grace=5)  # noqa: E731
    else:
        make = lambda t: t.using_window(streamtrio.SlidingWindow(2, 2, expires=100, grace=5))  # noqa: E731
    app, table, windowed, processed = windowed_app(
        app_factory, make, on_close=lambda key, value: closed.append((key, value)), table_cleanup_interval=0.1
    )
    # in order except 8.0 (2 behind: within grace) and 4.0 (at stream time 21, 17 behind: late)
    accepted = [("a", 0.0), ("a", 3.0), ("b", 9.5), ("a", 10.0), ("a", 8.0), ("b", 12.0), ("a", 21.0)]
    late = [("a", 4.0), ("b", 9.0)]
    if kind == "sliding":
        expected = sliding_reference(accepted, 2, 2)
    else:
        step = 10 if kind == "tumbling" else 5
        expected = reference_counts(accepted, 10, step)
    async with running(app):
        # Nothing may advance stream time by the clock before the last event: send them at once.
        await produce(app, accepted + late)
        await wait_for(lambda: processed[0] == len(accepted) + len(late))
        stream = T0 + 21.0
        assert windowed.late_dropped == len(late)
        await trio.sleep(0.5)  # stream time about 21.5
        final = {k: v for k, v in expected.items() if k[1][1] + 5 <= stream + 0.5}
        assert final  # some windows are final...
        assert dict(closed) == final  # ...reported once each, with every accepted event
        assert len(closed) == len(final)
        # a reported window stays readable until end + expires (a sliding table stores buckets)
        if kind == "sliding":
            assert dict(table.items()) == dict(Counter((k, (T0 + t, T0 + t)) for k, t in accepted))
        else:
            assert dict(table.items()) == expected
        await trio.sleep(200)
        assert dict(closed) == expected and len(closed) == len(expected)
        assert dict(table.items()) == {}


def test_grace_must_not_exceed_expires() -> None:
    with pytest.raises(streamtrio.ConfigurationError, match="grace"):
        streamtrio.TumblingWindow(10, expires=5, grace=6)
    window = streamtrio.HoppingWindow(10, 5, grace=3)
    assert (window.grace, window.expires) == (3.0, 3.0)
    assert streamtrio.TumblingWindow(10, expires=7).grace == 7.0


async def test_a_window_reported_at_grace_is_not_reported_again_after_a_restart(
    app_factory: AppFactory, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    closed: list[tuple[Any, Any]] = []

    def make() -> Any:
        return windowed_app(
            app_factory,
            lambda t: t.tumbling(10, expires=300, grace=2),
            on_close=lambda key, value: closed.append((key, value)),
            store="lmdb://",
            datadir=str(tmp_path),
            lmdb_sync=False,
        )

    events = [("k", float(t)) for t in range(0, 35, 3)]
    expected = reference_counts(events, 10, 10)
    app, table, _, processed = make()
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        await trio.sleep(1)
        assert sorted(w for (_, w), _ in closed) == [(T0, T0 + 10), (T0 + 10, T0 + 20), (T0 + 20, T0 + 30)]
        assert dict(table.items()) == expected  # reported windows are kept until end + expires
    first = list(closed)
    app2, table2, _, _ = make()
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        await trio.sleep(1)
        assert closed == first
        assert dict(table2.items()) == expected
        await trio.sleep(400)
        assert dict(table2.items()) == {}
    assert sorted(closed) == sorted(expected.items())
    assert len(closed) == len(expected)
