"""A topic stream read by a task (Faust's ``app.stream(topic)``) on a real Kafka broker.

The task is the stream's actor: what it processed is committed, what it sent
reaches the output topic, a restart resumes after the committed offsets.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

import streamtrio

from ._util import FAST_GROUP, committed_async, create_topic, produce, read_topic, unique, wait_for

PARTITIONS = 4


def audit_app(
    app_id: str, bootstrap: str, tmp: Path, source: str, out: str
) -> tuple[streamtrio.App, list[int]]:
    app = streamtrio.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(tmp),
        web_enabled=False,
        commit_interval=0.2,
        table_standby_replicas=0,
        shutdown_timeout=20.0,
        **FAST_GROUP,
    )
    withdrawals = app.topic(source, value_type=int, partitions=PARTITIONS)
    large = app.topic(out, value_type=int, partitions=1)
    stream = app.stream(withdrawals, processors=[lambda v: v * 10])
    seen: list[int] = []

    @app.task
    async def audit() -> None:
        async for value in stream:
            seen.append(value)
            if value >= 500:
                large.send_soon(value=value)

    return app, seen


async def test_task_stream_commits_what_it_processed_and_resumes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id, source, out = unique("tstream"), unique("withdrawals"), unique("large")
    create_topic(kafka_bootstrap, source, PARTITIONS)
    values = list(range(100))
    items: list[tuple[bytes | None, bytes]] = [(str(v).encode(), json.dumps(v).encode()) for v in values]
    await trio.to_thread.run_sync(lambda: produce(kafka_bootstrap, source, items))

    app, seen = audit_app(app_id, kafka_bootstrap, tmp_path / "one", source, out)
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: len(seen) == 100, timeout=60, what="the task to read 100 values")
        worker.stop()
    assert sorted(seen) == [v * 10 for v in values]
    offsets = await committed_async(kafka_bootstrap, app_id, source, PARTITIONS)
    assert sum(o or 0 for o in offsets.values()) == 100
    large = await trio.to_thread.run_sync(lambda: read_topic(kafka_bootstrap, out, 1))
    assert sorted(json.loads(m.value()) for m in large) == [v * 10 for v in values if v >= 50]

    # A restart resumes after the committed offsets: only new values are read.
    more = [(b"x", json.dumps(v).encode()) for v in (100, 101)]
    await trio.to_thread.run_sync(lambda: produce(kafka_bootstrap, source, more))
    app2, seen2 = audit_app(app_id, kafka_bootstrap, tmp_path / "two", source, out)
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        await wait_for(lambda: len(seen2) == 2, timeout=60, what="the two new values")
        await trio.sleep(1.0)  # nothing else arrives
        worker.stop()
    assert sorted(seen2) == [1000, 1010]
