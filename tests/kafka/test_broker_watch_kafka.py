"""On Apache Kafka: an idle worker whose broker is frozen (SIGSTOP) says so within 10 s, and again
when it answers. Before, only librdkafka's own logs spoke, and a frozen broker (open connections,
no answers) made them quiet too."""

from __future__ import annotations

import logging
import os
import re
import signal

import pytest
import trio

import streamtrio
from streamtrio.testing import KafkaTestBroker
from streamtrio.testing._broker import TEST_BROKER_ENV

from ._util import unique, wait_for
from .test_worker_kafka import kafka_app, new_topic, produce_async

pytestmark = pytest.mark.slow


async def test_a_frozen_broker_is_reported_by_an_idle_worker_on_kafka(
    kafka_broker: KafkaTestBroker, caplog: pytest.LogCaptureFixture
) -> None:
    if kafka_broker.pid is None:
        pytest.skip(f"{TEST_BROKER_ENV} names an external broker; this test freezes the session's own")
    topic = await new_topic(kafka_broker.bootstrap, "idle", 2)
    app = kafka_app(unique("watch"), kafka_broker.bootstrap)
    source = app.topic(topic, value_type=bytes, value_serializer="raw", partitions=2)

    seen: set[tuple[int, int]] = set()

    @app.agent(source)
    async def consume(stream: streamtrio.Stream[bytes]) -> None:
        async for event in stream.events():
            seen.add((event.message.partition, event.message.offset))

    caplog.set_level(logging.WARNING, logger="streamtrio._broker_watch")

    def said(pattern: str) -> bool:
        return any(re.search(pattern, r.getMessage()) for r in caplog.records)

    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: bool(worker.source_partitions()), timeout=60, what="an assignment")
        os.kill(kafka_broker.pid, signal.SIGSTOP)
        try:
            frozen_at = trio.current_time()
            await wait_for(
                lambda: said("cannot reach the broker at kafka://"), timeout=30, what="the warning"
            )
            noticed = trio.current_time() - frozen_at
            assert app.monitor.stats()["broker"]["reachable"] is False
        finally:
            os.kill(kafka_broker.pid, signal.SIGCONT)
        await wait_for(lambda: said("answers again"), timeout=30, what="the broker answering again")
        # and the worker carries on: what is produced now is processed
        produced = await produce_async(kafka_broker.bootstrap, topic, [(b"k%d" % i, b"v") for i in range(20)])
        expected = {(p, o) for p, offsets in produced.values.items() for o in offsets}
        await wait_for(lambda: expected <= seen, timeout=60, what="the events produced after the freeze")
        worker.stop()
    # "within 10 s" (probe every 5 s, 4 s to answer), with a margin for a loaded machine
    assert noticed <= 15.0, noticed
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot reach"))
    assert re.search(
        r"for \d+s \(.+\): waiting for (the events of 2 assigned partition\(s\)"
        r"|an assignment from the group)",
        line,
    ), line
