"""Start-up talks on Apache Kafka: a worker waiting for its group says so every 5 s."""

from __future__ import annotations

import logging
import threading

import pytest
import trio
from confluent_kafka import Consumer

import streamtrio

from ._util import create_topic, unique, wait_for
from .test_worker_kafka import kafka_app, running


@pytest.mark.slow
async def test_a_worker_kept_waiting_for_its_assignment_says_so_every_five_seconds(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrio")
    app_id, topic = unique("joining"), unique("join-events")
    await trio.to_thread.run_sync(create_topic, kafka_bootstrap, topic, 2)
    # A member that stops polling once assigned: a rebalance waits for it to
    # rejoin until its max.poll.interval.ms (12 s) runs out.
    stuck = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": app_id,
            "session.timeout.ms": 10_000,
            "max.poll.interval.ms": 12_000,
        }
    )
    assigned = threading.Event()
    stuck.subscribe([topic], on_assign=lambda c, parts: assigned.set())

    def poll_until_assigned() -> None:
        while not assigned.is_set():
            stuck.poll(0.1)

    await trio.to_thread.run_sync(poll_until_assigned)
    app = kafka_app(app_id, kafka_bootstrap, broker_session_timeout=10.0, broker_heartbeat_interval=1.0)
    events = app.topic(topic, value_type=bytes, value_serializer="raw", partitions=2)

    @app.agent(events)
    async def work(stream: streamtrio.Stream[bytes]) -> None:
        async for _ in stream:
            pass

    try:
        async with running(app) as worker:
            await wait_for(lambda: worker.generation > 0, timeout=60, what="the worker's assignment")
    finally:
        await trio.to_thread.run_sync(stuck.close)
    lines = [r.getMessage() for r in caplog.records]
    assert f"joining group {app_id!r} (waiting for assignment)" in lines
    waiting = [line for line in lines if line.startswith(f"joining group {app_id!r}: still waiting")]
    assert len(waiting) >= 2, lines
    assert "after 5s" in waiting[0] and "after 10s" in waiting[1]
