"""Failed and raising deliveries on the real broker (docs/worker.md, "acks and commits").

Both were invisible on memory://: the broker refusing a 2 MiB sink message
(MSG_SIZE_TOO_LARGE) was committed past in silence, and a delivery callback
that raised ended the whole trio run with TrioInternalError.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

import streamtrio
from streamtrio.testing import KafkaTestBroker

from ._util import (
    FAST_GROUP,
    committed_async,
    create_topic,
    partition_count,
    produce,
    read_topic,
    unique,
    wait_for,
)

BIG = 2 * 1024 * 1024


def last_commit(worker: streamtrio.Worker, topic: str) -> int | None:
    """What the worker last committed for partition 0 of ``topic``."""
    committer = worker.committer
    return None if committer is None else committer.committed.get(streamtrio.TP(topic, 0))


def kafka_app(app_id: str, bootstrap: str, **options: Any) -> streamtrio.App:
    settings: dict[str, Any] = {
        "store": "memory://",
        "web_enabled": False,
        "commit_interval": 0.2,
        "broker_request_timeout": 15.0,
        "shutdown_timeout": 10.0,
        **FAST_GROUP,
        **options,
    }
    return streamtrio.App(app_id, broker=f"kafka://{bootstrap}", **settings)


async def test_a_refused_sink_message_stops_the_worker_before_its_offset(kafka_bootstrap: str) -> None:
    app_id, source, out = unique("acct"), unique("acct-src"), unique("acct-out")
    create_topic(kafka_bootstrap, source, 1)
    create_topic(kafka_bootstrap, out, 1)
    app = kafka_app(app_id, kafka_bootstrap)
    src = app.topic(source, value_type=int, partitions=1)
    sink = app.topic(out, value_serializer="raw", partitions=1)

    @app.agent(src, sink=[sink])
    async def blow_up(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield b"x" * (BIG if value == 5 else 10)

    produce(kafka_bootstrap, source, [(None, str(i).encode()) for i in range(10)])
    with trio.fail_after(60):
        with pytest.raises(streamtrio.AgentError) as info:
            await streamtrio.serve(app)
    text = str(info.value)
    assert f"topic={source!r} partition=0 offset=5" in text
    assert "MSG_SIZE_TOO_LARGE" in text
    assert await committed_async(kafka_bootstrap, app_id, source, 1) == {0: 5}


async def test_a_raising_delivery_callback_fails_its_event_not_the_run(kafka_bootstrap: str) -> None:
    app_id, source, out = unique("acct"), unique("acct-src"), unique("acct-out")
    create_topic(kafka_bootstrap, source, 1)
    create_topic(kafka_bootstrap, out, 1)
    app = kafka_app(app_id, kafka_bootstrap)
    src = app.topic(source, value_type=int, partitions=1)
    sink = app.topic(out, value_type=int, partitions=1)

    def callback(fut: streamtrio.FutureMessage) -> None:
        raise KeyError("callback bug")

    @app.agent(src)
    async def sends(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            sink.send_soon(value=value, callback=callback if value == 4 else None)

    produce(kafka_bootstrap, source, [(None, str(i).encode()) for i in range(8)])
    with trio.fail_after(60):
        with pytest.raises(streamtrio.AgentError, match=r"offset=4 failed: 'callback bug'"):
            await streamtrio.serve(app)
    assert await committed_async(kafka_bootstrap, app_id, source, 1) == {0: 4}


async def test_source_offset_waits_for_the_channel_agent_downstream(kafka_bootstrap: str) -> None:
    app_id, source = unique("acct"), unique("acct-src")
    create_topic(kafka_bootstrap, source, 1)
    app = kafka_app(app_id, kafka_bootstrap)
    src = app.topic(source, value_type=int, partitions=1)
    gate = trio.Event()
    processed: list[int] = []

    @app.agent(app.channel(maxsize=1000))
    async def downstream(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value >= 5:
                await gate.wait()
            processed.append(value)

    @app.agent(src, sink=[downstream])
    async def upstream(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value

    produce(kafka_bootstrap, source, [(None, str(i).encode()) for i in range(200)])
    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: len(processed) == 5, timeout=30, what="the first 5 events downstream")
        await wait_for(lambda: last_commit(worker, source) == 5, timeout=30, what="the commit of offset 5")
        await trio.sleep(1.0)  # five commit intervals: none may pass offset 5
        assert await committed_async(kafka_bootstrap, app_id, source, 1) == {0: 5}
        gate.set()
        await wait_for(lambda: len(processed) == 200, timeout=30, what="everything downstream")
        worker.stop()
    assert await committed_async(kafka_bootstrap, app_id, source, 1) == {0: 200}


async def test_a_group_by_copy_the_client_refuses_stops_the_worker(kafka_bootstrap: str) -> None:
    """The source takes 1.5 MB values; the repartition copy exceeds the client's message.max.bytes."""
    app_id, source = unique("acct"), unique("acct-src")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    big_topic = NewTopic(
        source, num_partitions=1, replication_factor=1, config={"max.message.bytes": "4194304"}
    )
    for future in admin.create_topics([big_topic]).values():
        future.result(timeout=15)
    app = kafka_app(app_id, kafka_bootstrap, consumer_config={"fetch.max.bytes": 8388608})
    src = app.topic(source, value_serializer="raw", partitions=1)

    def first_letter(value: Any) -> str:
        return bytes(value)[:1].decode()

    @app.agent(src)
    async def regroup(stream: streamtrio.Stream[Any]) -> None:
        async for _value in stream.group_by(first_letter, name="letter"):
            pass

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4194304})
    for i in range(10):
        producer.produce(source, value=b"y" * (1_500_000 if i == 6 else 3), partition=0)
    assert producer.flush(30) == 0
    with trio.fail_after(90):
        with pytest.raises(streamtrio.AgentError, match=r"offset=6 failed.*MSG_SIZE_TOO_LARGE"):
            await streamtrio.serve(app)
    committed = (await committed_async(kafka_bootstrap, app_id, source, 1))[0]
    assert committed is None or committed <= 6


async def test_forward_and_a_foreign_reply_to_on_kafka(kafka_bootstrap: str) -> None:
    app_id, source, copies = unique("acct"), unique("acct-src"), unique("acct-copies")
    create_topic(kafka_bootstrap, source, 1)
    create_topic(kafka_bootstrap, copies, 1)
    app = kafka_app(app_id, kafka_bootstrap)
    src = app.topic(source, value_type=int, partitions=1)
    app.topic(copies, value_type=int, partitions=1)

    @app.agent(src, on_error="dead_letter")
    async def fwd(stream: streamtrio.Stream[int]) -> Any:
        async for event in stream.events():
            await event.forward(copies)
            yield event.value  # a reply, if the event asks for one

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        source, key=b"k", value=b"7", partition=0, timestamp=1_700_000_000_123, headers=[("h", b"v")]
    )
    producer.produce(
        source,
        value=b"8",
        partition=0,
        headers=[("streamtrio-reply-to", b"payments"), ("streamtrio-correlation-id", b"c1")],
    )
    assert producer.flush(30) == 0
    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: last_commit(worker, source) == 2, timeout=30, what="both events done")
        worker.stop()
    [first, _second] = await trio.to_thread.run_sync(read_topic, kafka_bootstrap, copies, 1)
    assert (first.key(), first.value(), first.timestamp()[1], first.headers()) == (
        b"k",
        b"7",
        1_700_000_000_123,
        [("h", b"v")],
    )
    dlq = f"{source}-dlq"
    dlq_partitions = partition_count(kafka_bootstrap, dlq)
    assert dlq_partitions is not None
    [dead] = await trio.to_thread.run_sync(read_topic, kafka_bootstrap, dlq, dlq_partitions)
    assert b"not a reply topic" in dict(dead.headers())["streamtrio-error"]
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert "payments" not in topics


@pytest.mark.slow
async def test_a_frozen_broker_holds_intake_at_the_producer_bound(kafka_broker: KafkaTestBroker) -> None:
    """Outputs cannot be written: the producer's queue stays at its bound, nothing is lost."""
    pid = kafka_broker.pid
    if pid is None:
        pytest.skip("STREAMTRIO_TEST_BROKER names an external broker; this test freezes the session's own")
    bootstrap = kafka_broker.bootstrap
    app_id, source, out = unique("acct"), unique("acct-src"), unique("acct-out")
    create_topic(bootstrap, source, 1)
    create_topic(bootstrap, out, 1)
    total = 20_000
    produce(bootstrap, source, [(None, str(i).encode()) for i in range(total)])
    # A session longer than the freeze: the membership is not lost meanwhile (a loss
    # hands the partition back, which is not what this test is about).
    app = kafka_app(
        app_id,
        bootstrap,
        producer_max_queued_messages=500,
        shutdown_timeout=30.0,
        broker_session_timeout=20.0,
        broker_heartbeat_interval=1.0,
    )
    src = app.topic(source, value_type=int, partitions=1)
    sink = app.topic(out, value_type=int, partitions=1)
    processed: list[int] = []

    @app.agent(src, sink=[sink])
    async def copy(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            processed.append(value)
            yield value

    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: len(processed) >= 1000, timeout=30, what="the first 1000 events")
        assert worker.producer is not None
        bound = worker.producer.bound
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_for(lambda: bound.full, timeout=10, what="the producer bound to fill")
            # Acknowledgements already on their way when the broker froze may
            # still be counted and free room once: let them land, then the
            # bound fills again and stays full.
            await trio.sleep(0.5)
            await wait_for(lambda: bound.full, timeout=10, what="the producer bound to fill again")
            frozen_at = len(processed)
            peak = 0
            for _ in range(20):
                await trio.sleep(0.1)
                peak = max(peak, bound.messages)
            assert peak <= 501
            assert len(processed) - frozen_at <= 1  # intake held: nothing more handed out
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_for(lambda: len(set(processed)) == total, timeout=120, what="every event after the thaw")
        await wait_for(lambda: last_commit(worker, source) == total, timeout=60, what="the last commit")
        worker.stop()
    values = {int(m.value()) for m in await trio.to_thread.run_sync(read_topic, bootstrap, out, 1)}
    assert values == set(range(total))


async def test_exactly_once_commits_while_another_agent_collects_a_batch(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id, batches, plain = unique("acct"), unique("acct-batches"), unique("acct-plain")
    create_topic(kafka_bootstrap, batches, 1)
    create_topic(kafka_bootstrap, plain, 1)
    app = kafka_app(
        app_id,
        kafka_bootstrap,
        processing_guarantee="exactly_once",
        worker_id="w1",
        datadir=str(tmp_path),
        rebalance_drain_timeout=1.0,
        shutdown_timeout=3.0,
    )
    batch_topic = app.topic(batches, value_type=int, partitions=1)
    plain_topic = app.topic(plain, value_type=int, partitions=1)
    seen: list[int] = []

    @app.agent(batch_topic)
    async def collect(stream: streamtrio.Stream[int]) -> None:
        async for _batch in stream.take(10):  # 3 events arrive: the batch never fills
            pass

    @app.agent(plain_topic)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)

    produce(kafka_bootstrap, batches, [(None, b"1"), (None, b"2"), (None, b"3")])
    produce(kafka_bootstrap, plain, [(None, str(i).encode()) for i in range(20)])
    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        await wait_for(lambda: last_commit(worker, plain) == 20, timeout=60, what="the plain topic's commit")
        assert worker.committer is not None
        assert worker.committer.statistics().postponed == 0
        worker.stop()
    assert await committed_async(kafka_bootstrap, app_id, plain, 1) == {0: 20}
    assert await committed_async(kafka_bootstrap, app_id, batches, 1) in ({0: None}, {0: 0})
