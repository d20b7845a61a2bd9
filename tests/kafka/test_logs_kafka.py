"""On Apache Kafka a worker logs "created topics" and "assigned" once each (not once per logger)."""

from __future__ import annotations

import logging

import pytest
import trio

import streamtrio

from ._util import FAST_GROUP, unique

pytestmark = pytest.mark.kafka


async def test_each_fact_once_on_kafka(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamtrio")
    app = streamtrio.App(
        unique("logs"),
        broker=f"kafka://{kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        broker_request_timeout=15.0,
        **FAST_GROUP,
    )
    source = unique("logs-src")
    topic = app.topic(source, value_type=int, partitions=2)

    @app.agent(topic)
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            pass

    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        with trio.fail_after(60):
            while not worker.source_partitions():
                await trio.sleep(0.05)
        worker.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    created = [m for m in lines if m.startswith("created topics")]
    assert len(created) == 1 and source in created[0]
    assert len([m for m in lines if m.startswith("assigned")]) == 1
    [revoked] = [m for m in lines if m.startswith("revoked")]
    assert "committing" not in revoked
