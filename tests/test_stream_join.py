"""Stream-stream windowed (inner) joins on the memory transport, against a brute-force reference."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import streamtrio

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

T0 = 1_700_000_000.0
BEFORE, AFTER = 3.0, 5.0


def join_app(
    app_factory: AppFactory,
    grace: float,
    partitions: int = 2,
    how: str = "inner",
    unmatched: list[tuple[str, int]] | None = None,
    **options: Any,
) -> tuple[streamtrio.App, list[tuple[int, int]], list[int], streamtrio.Table]:
    app = app_factory(commit_interval=0.05, **options)
    app.topic("left", key_type=str, value_type=int, partitions=partitions)
    app.topic("right", key_type=str, value_type=int, partitions=partitions)
    both = app.topic("left", "right", key_type=str, value_type=int, partitions=partitions)
    buffer = app.Table("join-buffer", partitions=partitions)
    pairs: list[tuple[int, int]] = []
    processed = [0]

    @app.agent(both)
    async def join(stream: streamtrio.Stream[int]) -> None:
        joined = stream.window_join(
            buffer,
            left="left",
            right="right",
            before=BEFORE,
            after=AFTER,
            grace=grace,
            how=how,
            on_unmatched=None if unmatched is None else lambda side, value: unmatched.append((side, value)),
        )
        async for left_id, right_id in joined:
            pairs.append((left_id, right_id))

    @app.agent(both)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            processed[0] += 1

    return app, pairs, processed, buffer


async def produce(app: streamtrio.App, events: list[tuple[str, str, float, int]]) -> None:
    async with app.open_client():
        for side, key, t, ident in events:
            app._topic_named(side).send_soon(key=key, value=ident, timestamp=T0 + t)
        await app.producer.flush()


def reference(events: list[tuple[str, str, float, int]]) -> list[tuple[int, int]]:
    lefts = [(k, t, i) for s, k, t, i in events if s == "left"]
    rights = [(k, t, i) for s, k, t, i in events if s == "right"]
    return sorted(
        (li, ri)
        for lk, lt, li in lefts
        for rk, rt, ri in rights
        if lk == rk and lt - BEFORE <= rt <= lt + AFTER
    )


@pytest.mark.parametrize("seed", [1, 2])
async def test_window_join_matches_the_reference_on_out_of_order_events(
    app_factory: AppFactory, seed: int
) -> None:
    rng = random.Random(seed)
    events = [
        (rng.choice(["left", "right"]), f"k{rng.randrange(6)}", float(rng.randrange(0, 80)) / 2, i)
        for i in range(300)
    ]
    # a grace longer than the whole run: no event is late, every pair must come out once
    app, pairs, processed, _ = join_app(app_factory, grace=1000)
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        await trio.sleep(0.5)
    expected = reference(events)
    assert len(expected) > 100
    assert sorted(pairs) == expected


async def test_buffered_events_expire_late_ones_are_dropped_and_a_restart_keeps_the_buffer(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    def make() -> Any:
        return join_app(app_factory, grace=1.0, partitions=1, store="lmdb://", datadir=str(tmp_path))

    app, pairs, processed, _buffer = make()
    async with running(app):
        # one at a time: the two topics' events are consumed in no particular order
        await produce(app, [("left", "a", 10.0, 1)])
        await wait_for(lambda: processed[0] == 1)
        await produce(app, [("right", "a", 12.0, 2)])
        await wait_for(lambda: processed[0] == 2)
        await trio.sleep(0.2)
        assert pairs == [(1, 2)]
    # after a restart the buffered events still join
    app2, pairs2, processed2, buffer2 = make()
    async with running(app2):
        await produce(app2, [("right", "a", 14.0, 3)])  # within after of left 1
        await wait_for(lambda: processed2[0] == 1)
        await trio.sleep(0.2)
        assert pairs2 == [(1, 3)]
        # stream time 17: left 1 (10 + after + grace = 16) and right 2 (12 + before + grace = 16)
        # expired; right 3 is kept until 18
        await produce(app2, [("left", "b", 17.0, 4)])
        await wait_for(lambda: processed2[0] == 2)
        await trio.sleep(0.2)

        assert buffer2._join_buffer is not None and buffer2._join_buffer.expired == 2
        await produce(app2, [("right", "a", 16.5, 5)])  # not late (16.5 >= 17 - 1)
        await wait_for(lambda: processed2[0] == 3)
        await produce(app2, [("left", "a", 13.0, 6)])  # late (13 < 17 - 1)
        await wait_for(lambda: processed2[0] == 4)
        await trio.sleep(0.2)
        assert pairs2 == [(1, 3)]  # right 5 finds no left (1 expired: 16.5 > 10 + 5), left 6 was late
        assert buffer2._join_buffer.late_dropped == 1
        await produce(app2, [("left", "z", 40.0, 7)])
        await wait_for(lambda: processed2[0] == 5)
        await trio.sleep(0.2)
        assert buffer2._join_buffer.expired == 5  # 1, 2, 3, 4 and 5 are gone


def unmatched_reference(events: list[tuple[str, str, float, int]], how: str) -> list[tuple[str, int]]:
    paired = {i for pair in reference(events) for i in pair}
    sides = {"left": ["left"], "outer": ["left", "right"]}[how]
    return sorted((s, i) for s, _k, _t, i in events if s in sides and i not in paired)


@pytest.mark.parametrize("how", ["left", "outer"])
async def test_left_and_outer_joins_report_events_that_expire_unmatched(
    app_factory: AppFactory, how: str
) -> None:
    rng = random.Random(how)
    events = [
        (rng.choice(["left", "right"]), f"k{rng.randrange(4)}", float(rng.randrange(0, 120)) / 2, i)
        for i in range(150)
    ]
    unmatched: list[tuple[str, int]] = []
    app, pairs, processed, _ = join_app(app_factory, grace=100, how=how, unmatched=unmatched)
    async with running(app):
        await produce(app, events)
        await wait_for(lambda: processed[0] == len(events))
        assert unmatched == []  # nothing expired yet
        # then stream time moves far on in every partition: every buffered event expires
        await produce(app, [("left", f"k{k}", 1000.0, 1000 + k) for k in range(4)])
        await wait_for(lambda: processed[0] == len(events) + 4)
        await trio.sleep(0.5)
    assert sorted(pairs) == reference(events)
    assert sorted(unmatched) == unmatched_reference(events, how)
    assert len(unmatched) == len(set(unmatched))


async def test_a_left_join_without_on_unmatched_stops_the_worker_at_start(app_factory: AppFactory) -> None:
    app, _, _, _ = join_app(app_factory, grace=1, how="left")
    with pytest.raises(streamtrio.AgentError, match="on_unmatched"):
        await streamtrio.serve(app)
