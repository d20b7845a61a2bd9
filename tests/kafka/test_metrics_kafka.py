"""``GET /metrics`` of a worker on Apache Kafka: consumer lag from librdkafka's watermarks.

A plain confluent producer writes a backlog while the agent holds its first
event: the lag scraped over HTTP is the backlog (high watermark minus the
offset the group started from); once the agent is released and the worker
commits, it is 0 and the events counted are the events produced.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

import streamtrio

from ..test_metrics import scrape, total, value
from ._util import FAST_GROUP, create_topic, produce, unique

pytestmark = pytest.mark.kafka

BACKLOG = 50


async def test_lag_and_events_on_kafka(kafka_bootstrap: str) -> None:
    topic = unique("metrics")
    await trio.to_thread.run_sync(create_topic, kafka_bootstrap, topic, 1)
    app = streamtrio.App(
        unique("metrics-app"),
        broker=f"kafka://{kafka_bootstrap}",
        store="memory://",
        web_port=0,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        commit_interval=0.2,
        broker_request_timeout=15.0,
        consumer_auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    source = app.topic(topic, value_type=bytes, value_serializer="raw", partitions=1)
    release = trio.Event()
    seen: list[bytes] = []

    @app.agent(source)
    async def hold(stream: streamtrio.Stream[bytes]) -> None:
        async for item in stream:
            await release.wait()
            seen.append(item)

    labels = {"topic": topic, "partition": "0"}
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10.0) as client:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        url = app.web.url
        assert url is not None
        items: list[tuple[bytes | None, bytes]] = [(None, str(i).encode()) for i in range(BACKLOG)]
        await trio.to_thread.run_sync(lambda: produce(kafka_bootstrap, topic, items, partition=0))
        samples: dict[Any, float] = {}
        with trio.fail_after(60):
            # librdkafka reports its statistics every second.
            while (samples := await scrape(client, url)).get(
                ("streamtrio_consumer_lag", tuple(sorted(labels.items())))
            ) != BACKLOG:
                await trio.sleep(0.1)
        assert value(samples, "streamtrio_events_in_flight") == 1
        assert value(samples, "streamtrio_assigned_partitions") == 1
        part = (await client.get(f"{url}/stats/")).json()["partitions"][f"{topic}[0]"]
        assert (part["end_offset"], part["consumer_lag"]) == (BACKLOG, BACKLOG)
        release.set()
        with trio.fail_after(60):
            while value(samples := await scrape(client, url), "streamtrio_consumer_lag", **labels) != 0:
                await trio.sleep(0.1)
        assert len(seen) == BACKLOG
        assert total(samples, "streamtrio_events_total", agent="hold", **labels) == BACKLOG
        assert value(samples, "streamtrio_commits_total") >= 1
        assert value(samples, "streamtrio_commit_latency_seconds_count") >= 1
        assert value(samples, "streamtrio_rebalances_total") >= 1
        worker.stop()
