"""The change stream of a table-table join (``joined.changes_to(topic)``) on memory://.

Random sets and deletes of two co-partitioned tables, made by an agent, are
compared with a reference computed here: per key, after each write, the
joined row (inner, left or outer, as Kafka Streams' KTable-KTable join) when
there is one, a tombstone when the write took the row out of the join, and
nothing when there was no row before either.
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

Op = tuple[str, str, str, int]  # side ("l"/"r"), key, "set"/"del", value


def reference(ops: list[Op], how: str) -> dict[str, list[Any]]:
    """Per key, the change stream values in order."""
    left: dict[str, int] = {}
    right: dict[str, int] = {}
    out: dict[str, list[Any]] = {}

    def row(k: str) -> Any:
        has_l, has_r = k in left, k in right
        present = {"inner": has_l and has_r, "left": has_l, "outer": has_l or has_r}[how]
        return [left.get(k), right.get(k)] if present else None

    for side, key, op, value in ops:
        table = left if side == "l" else right
        if op == "del" and key not in table:
            continue  # nothing written
        before = row(key)
        if op == "set":
            table[key] = value
        else:
            del table[key]
        after = row(key)
        if after is not None or before is not None:
            out.setdefault(key, []).append(after)
    return out


def random_ops(seed: int, n: int = 300) -> list[Op]:
    rng = random.Random(seed)
    return [
        (rng.choice("lr"), f"k{rng.randrange(8)}", rng.choice(["set", "set", "del"]), rng.randrange(100))
        for _ in range(n)
    ]


def join_app(
    app_factory: AppFactory, how: str, partitions: int
) -> tuple[streamtrio.App, Any, dict[str, list[Any]], list[int]]:
    app = app_factory(commit_interval=0.05)
    ops = app.topic("ops", key_type=str, partitions=partitions)
    joined_topic = app.topic("joined", key_type=str, partitions=partitions)
    left = app.Table("left", key_type=str, value_type=int, partitions=partitions)
    right = app.Table("right", key_type=str, value_type=int, partitions=partitions)
    joined = left.join(right, how=how).changes_to(joined_topic)  # type: ignore[arg-type]
    seen: dict[str, list[Any]] = {}
    counts = [0, 0]

    @app.agent(ops)
    async def write(stream: streamtrio.Stream[list[Any]]) -> None:
        async for event in stream.events():
            side, op, value = event.value
            table = left if side == "l" else right
            if op == "set":
                table[event.key] = value
            else:
                table.pop(event.key, None)
            counts[0] += 1

    @app.agent(joined_topic)
    async def collect(stream: streamtrio.Stream[Any]) -> None:
        async for event in stream.events():
            seen.setdefault(event.key, []).append(event.value)
            counts[1] += 1

    return app, joined, seen, counts


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_the_change_stream_matches_the_reference(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock, how: str, seed: int
) -> None:
    ops = random_ops(seed)
    expected = reference(ops, how)
    app, joined, seen, counts = join_app(app_factory, how, partitions=2)
    async with running(app):
        topic = app._topic_named("ops")
        async with app.open_client():
            for side, key, op, value in ops:
                topic.send_soon(key=key, value=[side, op, value])
            await app.producer.flush()
        total = sum(len(v) for v in expected.values())
        await wait_for(lambda: counts[0] == len(ops) and counts[1] >= total)
        await trio.sleep(0.5)
        assert seen == expected
        # the change stream ends where the view is: its last row per key, tombstones dropped
        last = {k: v[-1] for k, v in seen.items() if v[-1] is not None}
        assert last == {k: list(row) for k, row in joined.items()}
    assert any(None in values for values in expected.values())  # rows left the join


def test_changes_to_is_checked(app_factory: AppFactory) -> None:
    app = app_factory()
    out = app.topic("out")
    a, b = app.Table("a"), app.Table("b")
    with pytest.raises(streamtrio.ConfigurationError, match="expected a Topic"):
        a.join(b).changes_to(app.channel())  # type: ignore[arg-type]
    with pytest.raises(streamtrio.ConfigurationError, match="partitioned"):
        a.join(app.GlobalTable("g")).changes_to(out)
    joined = a.join(b).changes_to(out)
    with pytest.raises(streamtrio.ConfigurationError, match="already"):
        joined.changes_to(out)
