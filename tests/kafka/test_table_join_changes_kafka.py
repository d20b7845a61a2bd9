"""The change stream of a table-table join (``joined.changes_to(topic)``) on a real Kafka broker.

Two co-partitioned tables are written by two agents, each fed by its own
source topic, with a fixed random sequence of sets and deletes; their outer
join's change stream goes to an output topic. Read back with a plain consumer
(``read_committed``, librdkafka's default), each key's messages are the joined
rows and tombstones a reference computes from the writes in the order the
worker made them (two topics have no order between them, so the agents
record it; each side's own order is checked against what was produced).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import trio

import streamtrio

from ._util import lmdb_app, read_topic, unique, wait_for

PARTITIONS = 2

Op = tuple[str, str, str, int]  # side ("l"/"r"), key, "set"/"del", value


def random_ops(seed: int, n: int = 200) -> list[Op]:
    rng = random.Random(seed)
    return [
        (rng.choice("lr"), f"k{rng.randrange(6)}", rng.choice(["set", "set", "del"]), rng.randrange(100))
        for _ in range(n)
    ]


def outer_reference(ops: list[Op]) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """(per key the change stream values in order, the final joined rows) of an outer join."""
    left: dict[str, int] = {}
    right: dict[str, int] = {}
    out: dict[str, list[Any]] = {}

    def row(k: str) -> Any:
        return [left.get(k), right.get(k)] if k in left or k in right else None

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
    final = {k: row(k) for k in set(left) | set(right)}
    return out, final


def join_app(app_id: str, bootstrap: str, datadir: Path, guarantee: str) -> Any:
    app = lmdb_app(app_id, bootstrap, datadir, processing_guarantee=guarantee, commit_interval=0.2)
    sources = {
        side: app.topic(f"{app_id}-{side}-writes", key_type=str, partitions=PARTITIONS) for side in "lr"
    }
    out = app.topic(f"{app_id}-joined", key_type=str, partitions=PARTITIONS)
    tables = {
        side: app.Table(name, key_type=str, value_type=int, partitions=PARTITIONS)
        for side, name in (("l", "names"), ("r", "emails"))
    }
    tables["l"].join(tables["r"], how="outer").changes_to(out)
    applied: list[Op] = []

    def writer(side: str) -> Any:
        table = tables[side]

        async def write(stream: streamtrio.Stream[list[Any]]) -> None:
            async for event in stream.events():
                op, value = event.value
                if op == "set":
                    table[event.key] = value
                else:
                    table.pop(event.key, None)
                applied.append((side, event.key, op, value))

        write.__name__ = f"write_{side}"
        return write

    for side in "lr":
        app.agent(sources[side], name=f"write-{side}")(writer(side))
    return app, sources, out, applied


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_outer_join_change_stream_matches_the_reference(
    kafka_bootstrap: str, tmp_path: Path, guarantee: str
) -> None:
    ops = random_ops(7)
    app, sources, out, applied = join_app(unique("tjoin"), kafka_bootstrap, tmp_path, guarantee)
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        async with app.open_client():
            for side, key, op, value in ops:
                sources[side].send_soon(key=key, value=[op, value])
            await app.producer.flush()
        await wait_for(lambda: len(applied) == len(ops), timeout=60, what="the writes")
        await trio.sleep(1.0)  # the last outputs are delivered (and their transaction commits)
        worker.stop()

    # each side's writes were made in the order they were produced, key by key
    for side in "lr":
        for key in {k for _, k, _, _ in ops}:
            mine = [op for op in ops if op[0] == side and op[1] == key]
            assert [op for op in applied if op[0] == side and op[1] == key] == mine
    expected, final = outer_reference(applied)
    assert final == outer_reference(ops)[1]  # the order between the sides changes no end state

    messages = await trio.to_thread.run_sync(read_topic, kafka_bootstrap, out.get_topic_name(), PARTITIONS)
    got: dict[str, list[Any]] = {}
    for m in messages:
        got.setdefault(m.key().decode(), []).append(None if m.value() is None else json.loads(m.value()))
    assert got == expected
    assert {k: v[-1] for k, v in got.items() if v[-1] is not None} == final
    assert any(None in values for values in expected.values())  # rows left the join
    assert all(m.value() != b"null" for m in messages)  # a tombstone is a Kafka null value
