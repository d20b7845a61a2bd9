"""On Apache Kafka: a dead-letter topic appears with the first letter, with the source's partitions."""

from __future__ import annotations

import pytest
import trio

import streamtrio

from ._util import FAST_GROUP, committed_async, create_topic, partition_count, produce, read_topic, unique

pytestmark = pytest.mark.kafka


async def test_dead_letter_topic_created_on_first_letter_with_the_source_partitions(
    kafka_bootstrap: str,
) -> None:
    source = unique("dl-src")
    await trio.to_thread.run_sync(create_topic, kafka_bootstrap, source, 3)
    app_id = unique("dl-app")
    app = streamtrio.App(
        app_id,
        broker=f"kafka://{kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        commit_interval=0.2,
        topic_partitions=8,
        broker_request_timeout=15.0,
        consumer_auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    topic = app.topic(source, value_type=int, partitions=3)
    seen: list[int] = []

    @app.agent(topic, on_error="dead_letter")
    async def check(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value < 0:
                raise ValueError("negative")
            seen.append(value)

    dlq = f"{source}-dlq"
    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        await trio.to_thread.run_sync(lambda: produce(kafka_bootstrap, source, [(None, b"1")], partition=0))
        with trio.fail_after(60):
            while seen != [1]:
                await trio.sleep(0.05)
        assert await trio.to_thread.run_sync(partition_count, kafka_bootstrap, dlq) is None
        await trio.to_thread.run_sync(lambda: produce(kafka_bootstrap, source, [(b"k", b"-1")], partition=1))
        with trio.fail_after(60):
            while (await committed_async(kafka_bootstrap, app_id, source, 3)).get(1) != 1:
                await trio.sleep(0.1)
        worker.stop()
    assert await trio.to_thread.run_sync(partition_count, kafka_bootstrap, dlq) == 3
    [dead] = await trio.to_thread.run_sync(read_topic, kafka_bootstrap, dlq, 3)
    assert (dead.key(), dead.value()) == (b"k", b"-1")
