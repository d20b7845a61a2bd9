"""Writes outside events to another worker's keys, on Apache Kafka: two LMDB workers in one
process; the write made on one is applied by the other, lands in the changelog once as the
owner's write (inside its transaction under exactly_once), and survives the owner's stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

import streamtrio

from ._util import lmdb_app, read_topic, unique, wait_for
from .test_worker_kafka import running

PARTITIONS = 4


def counting_app(app_id: str, bootstrap: str, datadir: Path, guarantee: str) -> tuple[streamtrio.App, Any]:
    app = lmdb_app(app_id, bootstrap, datadir, commit_interval=0.3, processing_guarantee=guarantee)
    words = app.topic(f"{app_id}-words", key_type=str, value_type=str, partitions=PARTITIONS)
    counts = app.Table("counts", default=int, key_type=str, value_type=int, partitions=PARTITIONS)

    @app.agent(words)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for word in stream:
            counts[word] += 1

    return app, counts


def owned(worker: streamtrio.Worker, app: streamtrio.App) -> set[int]:
    return {tp.partition for tp in worker.source_partitions() if tp.topic == f"{app.id}-words"}


def changelog_values(bootstrap: str, table: Any, key: str) -> list[Any]:
    kbytes = msgpack.packb(key)
    return [
        None if m.value() is None else msgpack.unpackb(m.value())
        for m in read_topic(bootstrap, table.changelog_topic_name, PARTITIONS)
        if m.key() == kbytes
    ]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_write_outside_an_event_is_applied_by_the_owner(
    kafka_bootstrap: str, tmp_path: Path, guarantee: str
) -> None:
    app_id = unique("foreign")
    first, counts_a = counting_app(app_id, kafka_bootstrap, tmp_path / "a", guarantee)
    second, counts_b = counting_app(app_id, kafka_bootstrap, tmp_path / "b", guarantee)
    async with running(first) as a:
        async with running(second) as b:
            await wait_for(
                lambda: owned(a, first) and owned(b, second) and not a._assigning and not b._assigning,
                timeout=60,
                what="both workers assigned and recovered",
            )
            theirs = owned(b, second)
            key = next(f"k{i}" for i in range(1000) if counts_a.key_partition(f"k{i}") in theirs)
            gone = next(f"g{i}" for i in range(1000) if counts_a.key_partition(f"g{i}") in theirs)
            counts_a[key] = 7  # a timer or web view on A
            counts_a[key] = 8
            counts_a[gone] = 1
            await wait_for(lambda: counts_b.get(key) == 8 and gone in counts_b, timeout=30, what="B applies")
            del counts_a[gone]
            await wait_for(lambda: gone not in counts_b, timeout=30, what="B applies the delete")
            assert counts_a.get(key) is None  # applied by the owner only
            values = await trio.to_thread.run_sync(changelog_values, kafka_bootstrap, counts_b, key)
            assert values[-1] == 8, values
        # B stopped: A takes B's partitions over and recovers them from the changelog
        await wait_for(
            lambda: len(owned(a, first)) == PARTITIONS and not a._assigning,
            timeout=60,
            what="A owns every partition",
        )
        assert counts_a[key] == 8
        assert gone not in counts_a
