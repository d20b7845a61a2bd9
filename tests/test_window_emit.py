"""``grace=`` for sessions and ``emit=`` for windowed tables and sessions, on memory:// with MockClock.

``emit="final"`` reports each window once when it is final (end + grace);
``emit="update"`` hands every update of a window to ``on_window_close`` as it
happens (a tombstone, ``None``, for a session merged away). Results are
compared with references computed here from the events.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import streamtrio

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

T0 = 1_700_000_000.0
GAP = 5.0

Session = tuple[str, tuple[float, float]]


def session_reference(
    events: list[tuple[str, float]], *, grace: float, expires: float, idle: float = 0.0
) -> tuple[dict[Session, int], dict[Session, int], dict[Session, int], int]:
    """(every session, reported at end + gap + grace, still stored, late count) on one partition."""
    newest: float | None = None
    accepted: dict[str, list[float]] = {}
    late = 0
    for key, t in events:
        newest = t if newest is None else max(newest, t)
        if t < newest - grace:
            late += 1
            continue
        accepted.setdefault(key, []).append(t)
    assert newest is not None
    sessions: dict[Session, int] = {}
    for key, times in accepted.items():
        times.sort()
        start = prev = times[0]
        count = 0
        for t in times:
            if t - prev > GAP:
                sessions[(key, (T0 + start, T0 + prev))] = count
                start, count = t, 0
            prev = t
            count += 1
        sessions[(key, (T0 + start, T0 + prev))] = count
    now = newest + idle
    final = {s: c for s, c in sessions.items() if s[1][1] - T0 + GAP + grace < now}
    stored = {s: c for s, c in sessions.items() if not s[1][1] - T0 + GAP + expires < now}
    return sessions, final, stored, late


def random_events(seed: int, n: int = 200) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    events: list[tuple[str, float]] = []
    clock = 0.0
    for _ in range(n):
        clock += rng.choice([0.5, 1, 2, 4, 7])
        t = clock - (rng.random() * 12 if rng.random() < 0.3 else 0)
        events.append((f"k{rng.randrange(4)}", round(t * 4) / 4))
    return events


def make_app(
    app_factory: AppFactory, seen: list[tuple[Any, Any]], window: Callable[[streamtrio.Table], Any]
) -> tuple[streamtrio.App, streamtrio.Table, Any, list[int]]:
    app = app_factory(commit_interval=0.05)
    clicks = app.topic("clicks", key_type=str, value_type=int, partitions=1)
    table = app.Table(
        "w",
        default=int,
        key_type=str,
        value_type=int,
        partitions=1,
        on_window_close=lambda key, value: seen.append((key, value)),
    )
    wrapper = window(table)
    processed = [0]

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            wrapper[event.key] += event.value
            processed[0] += 1

    return app, table, wrapper, processed


async def produce(app: streamtrio.App, events: list[tuple[str, float]]) -> None:
    topic = app._topic_named("clicks")
    async with app.open_client():
        for key, offset in events:
            topic.send_soon(key=key, value=1, timestamp=T0 + offset)
        await app.producer.flush()


def materialize(updates: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """The windows an update stream describes: the last value of each, tombstones removed."""
    state: dict[Any, Any] = {}
    for key, value in updates:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


# -- sessions: grace ------------------------------------------------------------------


async def test_a_session_is_reported_at_end_gap_grace_and_kept_until_expires(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    closed: list[tuple[Any, Any]] = []
    app, table, sessions, processed = make_app(
        app_factory, closed, lambda t: t.session(GAP, expires=10, grace=2)
    )
    async with running(app):
        await produce(app, [("a", 0.0), ("a", 1.0), ("c", 8.5)])  # 8.5 > 1 + 5 + 2: a is final
        await wait_for(lambda: processed[0] == 3)
        await wait_for(lambda: len(closed) == 1)
        assert closed == [(("a", (T0, T0 + 1)), 2)]
        assert sessions.sessions("a") == [((T0, T0 + 1), 2)]  # still readable
        await produce(app, [("a", 6.0)])  # within the gap of a, but 6 < 8.5 - 2: late
        await wait_for(lambda: processed[0] == 4)
        assert sessions.late_dropped == 1
        assert sessions.sessions("a") == [((T0, T0 + 1), 2)]
        await produce(app, [("c", 16.5)])  # 16.5 > 1 + 5 + 10: a is deleted, not reported again
        await wait_for(lambda: processed[0] == 5)
        await wait_for(lambda: sessions.sessions("a") == [])
        assert closed == [(("a", (T0, T0 + 1)), 2), (("c", (T0 + 8.5, T0 + 8.5)), 1)]  # c: 15.5
        assert table.info()["sessions_closed"] == 2


@pytest.mark.parametrize("seed", [11, 12])
async def test_sessions_with_grace_match_the_reference(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    events = random_events(seed)
    closed: list[tuple[Any, Any]] = []
    app, table, sessions, processed = make_app(
        app_factory, closed, lambda t: t.session(GAP, expires=9, grace=3)
    )
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        await trio.sleep(0.1)
        # idle 0.1 s and more (times are on a quarter-second grid)
        _all, final, stored, late = session_reference(events, grace=3, expires=9, idle=0.1)
        assert len(closed) == len(final) and dict(closed) == final
        assert dict(table.items()) == stored
        assert sessions.late_dropped == late


def test_session_grace_is_checked(app_factory: AppFactory) -> None:
    app = app_factory()
    window = app.Table("g1").session(5, grace=2).window
    assert (window.grace, window.expires) == (2.0, 2.0)
    window = app.Table("g2").session(5, expires=8).window
    assert (window.grace, window.expires) == (8.0, 8.0)
    with pytest.raises(streamtrio.ConfigurationError, match="must not exceed expires"):
        app.Table("g3").session(5, expires=1, grace=2)


# -- emit="update" ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [21, 22])
async def test_session_updates_describe_every_session_and_nothing_is_reported_at_close(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    events = random_events(seed)
    updates: list[tuple[Any, Any]] = []
    app, table, sessions, processed = make_app(
        app_factory, updates, lambda t: t.session(GAP, expires=9, grace=3, emit="update")
    )
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        n = len(updates)
        await trio.sleep(30)  # every session closes and is deleted: no call for that
        assert len(updates) == n
        assert dict(table.items()) == {}
    every, _final, _stored, late = session_reference(events, grace=3, expires=9)
    assert sessions.late_dropped == late
    assert materialize(updates) == every
    assert any(value is None for _, value in updates)  # sessions extended or merged away
    accepted = len(events) - late
    assert sum(1 for _, value in updates if value is not None) == accepted  # one per event


async def test_session_updates_carry_a_tombstone_for_each_session_merged_away(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    updates: list[tuple[Any, Any]] = []
    app, _table, _sessions, processed = make_app(
        app_factory, updates, lambda t: t.session(GAP, expires=100, emit="update")
    )
    async with running(app):
        await produce(app, [("a", 0.0), ("a", 8.0), ("a", 4.0), ("a", 5.0)])
        await wait_for(lambda: processed[0] == 4)
    assert updates == [
        (("a", (T0, T0)), 1),
        (("a", (T0 + 8, T0 + 8)), 1),
        (("a", (T0, T0)), None),  # a@4 bridges both
        (("a", (T0 + 8, T0 + 8)), None),
        (("a", (T0, T0 + 8)), 3),
        (("a", (T0, T0 + 8)), 4),  # same range: no tombstone
    ]


async def test_tumbling_and_hopping_updates_are_every_write_of_every_window(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    tumbling: list[tuple[Any, Any]] = []
    hopping: list[tuple[Any, Any]] = []
    app = app_factory(commit_interval=0.05)
    clicks = app.topic("clicks", key_type=str, value_type=int, partitions=1)
    per10 = app.Table(
        "t", default=int, partitions=1, on_window_close=lambda k, v: tumbling.append((k, v))
    ).tumbling(10, expires=5, emit="update")
    hop = app.Table(
        "h", default=int, partitions=1, on_window_close=lambda k, v: hopping.append((k, v))
    ).hopping(10, 5, expires=5, emit="update")
    processed = [0]

    @app.agent(clicks)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            per10[event.key] += 1
            hop[event.key] += 1
            processed[0] += 1

    async with running(app):
        await produce(app, [("a", 1.0), ("a", 7.0), ("a", 12.0), ("a", 3.0)])
        await wait_for(lambda: processed[0] == 4)
        await trio.sleep(60)  # every window closes: no further call
    assert tumbling == [
        (("a", (T0, T0 + 10)), 1),
        (("a", (T0, T0 + 10)), 2),
        (("a", (T0 + 10, T0 + 20)), 1),
        (("a", (T0, T0 + 10)), 3),
    ]
    assert hopping == [
        (("a", (T0 - 5, T0 + 5)), 1),
        (("a", (T0, T0 + 10)), 1),
        (("a", (T0, T0 + 10)), 2),
        (("a", (T0 + 5, T0 + 15)), 1),
        (("a", (T0 + 5, T0 + 15)), 2),
        (("a", (T0 + 10, T0 + 20)), 1),
        (("a", (T0, T0 + 10)), 3),  # a@3 is late for [-5, 5): final at 5 + 5 <= 12
    ]


async def test_sliding_updates_are_every_window_a_write_changes(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(3)
    events = [("a", float(rng.randrange(40))) for _ in range(60)]
    events.sort(key=lambda e: e[1])
    updates: list[tuple[Any, Any]] = []
    before, after = 3.0, 2.0
    app, _table, _wrapper, processed = make_app(
        app_factory,
        updates,
        lambda t: t.using_window(streamtrio.SlidingWindow(before, after, expires=1000), emit="update"),
    )
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
    times = [t for _, t in events]
    expected = {
        ("a", (T0 + u - before, T0 + u + after)): sum(1 for t in times if u - before <= t <= u + after)
        for u in times
    }
    assert materialize(updates) == expected
    # a write at t changes the window of every event time u with u - before <= t <= u + after
    assert len(updates) == sum(
        len({u for u in times[: i + 1] if t - after <= u <= t + before}) for i, t in enumerate(times)
    )


def test_emit_is_checked(app_factory: AppFactory) -> None:
    app = app_factory()
    with pytest.raises(streamtrio.ConfigurationError, match="emit must be"):
        app.Table("e1").tumbling(10, emit="sometimes")  # type: ignore[arg-type]

    async def on_close(key: Any, value: Any) -> None:
        pass

    with pytest.raises(streamtrio.ConfigurationError, match="plain function"):
        app.Table("e2", on_window_close=on_close).session(5, emit="update")
    with pytest.raises(streamtrio.ConfigurationError, match="plain function"):
        app.Table("e3", on_window_close=on_close).hopping(10, 5, emit="update")
    table = app.Table("e4")
    table.tumbling(10, emit="final")
    with pytest.raises(streamtrio.ConfigurationError, match="already windowed"):
        table.tumbling(10, emit="update")
