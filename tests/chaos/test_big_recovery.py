"""A recovery of 1,000,000 changelog records (issue 20): the worker replays them in trio
tasks while its partitions stay paused, so the consumer goes on polling and the member
keeps its membership though the replay lasts several times ``max.poll.interval.ms``;
progress is reported every few seconds; every key ends with the changelog's last value.

Long-only (``nox -s chaos``): filling the changelog and replaying it takes about 10 s.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import msgpack
import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

import streamtrio
from streamtrio._tables.recovery import PROGRESS_EVERY

from ..kafka._util import lmdb_app, unique, wait_for
from ..kafka.test_worker_kafka import running
from ._broker import ChaosBroker

RECORDS = 1_000_000
KEYS = 250_000
PARTITIONS = 4
PROGRESS = re.compile(r"recovering tables: (\d+)/(\d+) records")


def fill_changelog(bootstrap: str, topic: str, place: Callable[[str], int]) -> dict[str, int]:
    """Write RECORDS records over KEYS keys; return each key's last value."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"cleanup.policy": "compact"}
    new = NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1, config=config)
    for future in admin.create_topics([new]).values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000})
    last: dict[str, int] = {}
    failures: list[str] = []

    def report(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    for i in range(RECORDS):
        key = f"k{i % KEYS}"
        last[key] = i
        record = {"key": msgpack.packb(key), "value": msgpack.packb(i), "partition": place(key)}
        while True:
            try:
                producer.produce(topic, on_delivery=report, **record)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0 and not failures, failures[:3]
    return last


@pytest.mark.chaos_long_only
async def test_a_million_record_recovery_keeps_the_membership(
    proxied_kafka: ChaosBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bootstrap = proxied_kafka.bootstrap
    app_id = unique("bigrecovery")
    app = lmdb_app(
        app_id,
        bootstrap,
        tmp_path,
        # the replay takes several of these (2.6 s at 381,000 records/s, 7.7 s before)
        broker_max_poll_interval=1.0,
        broker_session_timeout=1.0,
        broker_heartbeat_interval=0.1,
        lmdb_sync=False,
    )
    source = app.topic(f"{app_id}-source", partitions=PARTITIONS)
    counts = app.Table("counts", default=int, partitions=PARTITIONS)

    @app.agent(source)
    async def count(stream: streamtrio.Stream[bytes]) -> None:
        async for _ in stream:
            pass

    began = time.time()
    places = {f"k{i}": counts.key_partition(f"k{i}") for i in range(KEYS)}
    last = await trio.to_thread.run_sync(
        fill_changelog, bootstrap, counts.changelog_topic_name, places.__getitem__
    )
    filled = time.time() - began
    async with running(app) as worker:
        began = time.time()
        await wait_for(
            lambda: worker.generation > 0 and not worker._assigning,
            timeout=300,
            what="the recovery of 1M records",
        )
        took = time.time() - began
        generation = worker.generation
        assert generation == 1, "the member was evicted and rejoined during the recovery"
        wrong = [k for k, v in last.items() if counts.get(k) != v]
        assert not wrong, f"{len(wrong)} keys wrong, e.g. {wrong[:3]}"
        assert len(counts) == KEYS
    lines = [r for r in caplog.records if PROGRESS.search(r.getMessage())]
    times = [began] + [r.created for r in lines]
    gaps = [b - a for a, b in pairwise(times)]
    print(
        f"\n1M-record recovery: changelog filled in {filled:.1f}s; replayed in {took:.1f}s "
        f"({RECORDS / took:,.0f} records/s), {len(lines)} progress lines, longest gap "
        f"{max(gaps, default=0):.1f}s, generation {generation} (max.poll.interval 1s)"
    )
    assert took > 2.0, f"the replay ({took:.1f}s) no longer outlasts max.poll.interval: make it longer"
    # progress every PROGRESS_EVERY seconds while it lasts
    assert len(lines) >= int(took // PROGRESS_EVERY) - 1, [r.getMessage() for r in lines]
    assert max(gaps, default=0) < 2 * PROGRESS_EVERY + 2, [r.getMessage() for r in lines]
    worker_lines = " ".join(r.getMessage() for r in caplog.records if r.name == "streamtrio._worker")
    assert "lost" not in worker_lines
