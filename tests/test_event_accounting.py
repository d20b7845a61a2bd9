"""Every output of an event is part of its ack (docs/worker.md, "acks and commits").

Each test is a failure path seen on the outside: a sink or channel agent that
has not finished, a failed or raising delivery, a requeued event, a failed
group_by copy, a reply-to header naming a foreign topic, a full producer. The
assertions are what a user sees: committed offsets, what reached the output
topic, the error the worker stopped with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio import TP
from streamtrio._rpc import CORRELATION_ID, REPLY_TO
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

BIG = 2 * 1024 * 1024  # above the broker's message.max.bytes, like Kafka's default


async def produce(app: streamtrio.App, topic: str, values: list[Any], *, headers: Any = None) -> None:
    async with app.open_client():
        for value in values:
            app.producer.send_nowait(topic, None, json.dumps(value).encode(), partition=0, headers=headers)
        await app.producer.flush()


def committed(broker: MemoryBroker, topic: str) -> int | None:
    return broker.committed("testapp").get(TP(topic, 0))


def values(broker: MemoryBroker, topic: str) -> list[Any]:
    return [json.loads(m.value or b"null") for m in broker.messages(topic, 0)]


async def test_source_offset_waits_for_the_channel_agent_downstream(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Seen: source committed at 200 while the channel agent had processed 5."""
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)
    gate = trio.Event()
    processed: list[int] = []

    @app.agent(app.channel(maxsize=1000))
    async def downstream(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value >= 5:
                await gate.wait()
            processed.append(value)

    @app.agent(source, sink=[downstream])
    async def upstream(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value

    async with running(app):
        await produce(app, "src", list(range(200)))
        await wait_for(lambda: len(processed) == 5)
        await wait_for(lambda: committed(broker, "src") == 5)
        for _ in range(20):  # commits keep running; none may pass offset 5
            await trio.sleep(0.01)
        assert committed(broker, "src") == 5
        gate.set()
        await wait_for(lambda: committed(broker, "src") == 200)
    assert processed == list(range(200))


async def test_graceful_stop_never_commits_what_a_channel_still_holds(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Seen: after a graceful stop 194 events buffered in a channel were gone."""
    app = app_factory(commit_interval=0.01, shutdown_timeout=0.5)
    source = app.topic("src", value_type=int, partitions=1)
    gate = trio.Event()
    processed: list[int] = []

    @app.agent(app.channel(maxsize=1000))
    async def downstream(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value >= 6:
                await gate.wait()
            processed.append(value)

    @app.agent(source)
    async def upstream(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            await downstream.send(value=value)

    async with running(app):
        await produce(app, "src", list(range(200)))
        await wait_for(lambda: len(processed) == 6)
    assert committed(broker, "src") == 6  # the stop committed only what was done

    processed.clear()
    gate.set()
    async with running(app):
        await wait_for(lambda: committed(broker, "src") == 200)
    assert processed == list(range(6, 200))


async def test_failed_sink_delivery_stops_the_worker_naming_the_event(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Seen: 5 failed deliveries, source committed past them, no error, nothing logged."""
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)
    out = app.topic("out", value_serializer="raw", partitions=1)

    @app.agent(source, sink=[out])
    async def blow_up(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield b"x" * (BIG if value == 3 else 10)

    await produce(app, "src", list(range(10)))
    with pytest.raises(streamtrio.AgentError) as info:
        await streamtrio.serve(app)
    text = str(info.value)
    assert "topic='src' partition=0 offset=3" in text
    assert "MSG_SIZE_TOO_LARGE" in text
    assert committed(broker, "src") == 3


@pytest.mark.parametrize("how", ["send_soon", "yield"])
async def test_failed_delivery_with_dead_letter_policy(
    app_factory: AppFactory, broker: MemoryBroker, how: str
) -> None:
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)
    out = app.topic("out", value_serializer="raw", partitions=1)

    @app.agent(source, sink=[out] if how == "yield" else [], on_error="dead_letter")
    async def blow_up(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            payload = b"x" * (BIG if value == 3 else 10)
            if how == "yield":
                yield payload
            else:
                out.send_soon(value=payload)

    async with running(app):
        await produce(app, "src", list(range(6)))
        await wait_for(lambda: committed(broker, "src") == 6)
    assert len(broker.messages("out", 0)) == 5
    # The dead-letter topic has the source's partition count (1).
    [dead] = broker.messages("src-dlq", 0)
    assert dead.value == b"3"
    assert b"MSG_SIZE_TOO_LARGE" in dict(dead.headers or [])["streamtrio-error"]


async def test_failed_delivery_with_restart_policy_processes_the_event_again(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01, agent_restart_backoff=0.01)
    source = app.topic("src", value_type=int, partitions=1)
    out = app.topic("out", value_serializer="raw", partitions=1)
    attempts: list[int] = []

    @app.agent(source, on_error="restart")
    async def flaky(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            attempts.append(value)
            too_big = value == 2 and attempts.count(2) == 1
            out.send_soon(value=b"x" * BIG if too_big else str(value).encode())

    async with running(app):
        await produce(app, "src", list(range(5)))
        await wait_for(lambda: committed(broker, "src") == 5)
    assert attempts == [0, 1, 2, 3, 4, 2]
    assert [m.value for m in broker.messages("out", 0)] == [b"0", b"1", b"3", b"4", b"2"]


async def test_an_undelivered_output_holds_the_commit(app_factory: AppFactory, broker: MemoryBroker) -> None:
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)
    out = app.topic("out", value_type=int, partitions=1)
    processed: list[int] = []

    @app.agent(source)
    async def copy(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value == 2:
                broker.block_topic("out")
            out.send_soon(value=value)
            processed.append(value)

    broker.create_topic("out", 1)
    async with running(app):
        await produce(app, "src", list(range(5)))
        await wait_for(lambda: len(processed) == 5)
        for _ in range(10):
            await trio.sleep(0.01)
            assert (committed(broker, "src") or 0) <= 2
        broker.unblock_topic("out")
        await wait_for(lambda: committed(broker, "src") == 5)
    assert values(broker, "out") == [0, 1, 2, 3, 4]


async def test_raising_delivery_callback_fails_its_event_not_the_run(
    app_factory: AppFactory, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)
    out = app.topic("out", value_type=int, partitions=1)

    def callback(fut: streamtrio.FutureMessage) -> None:
        raise KeyError("callback bug")

    @app.agent(source)
    async def sends(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            out.send_soon(value=value, callback=callback if value == 4 else None)

    await produce(app, "src", list(range(8)))
    with pytest.raises(streamtrio.AgentError, match=r"offset=4 failed: 'callback bug'"):
        await streamtrio.serve(app)
    assert committed(broker, "src") == 4
    assert "the delivery callback of a message to 'out' raised" in caplog.text


async def test_noack_with_restart_never_commits_past_the_requeued_event(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Seen: offset 1 committed while event 0 was back in the buffer, and it stayed at 1."""
    app = app_factory(commit_interval=0.01, agent_restart_backoff=0.05)
    source = app.topic("src", value_type=int, partitions=1)
    seen: list[int] = []
    crashed = False

    @app.agent(source, on_error="restart")
    async def manual(stream: streamtrio.Stream[int]) -> None:
        nonlocal crashed
        held: list[streamtrio.Event[int]] = []
        async for event in stream.noack().events():
            seen.append(event.value)
            held.append(event)
            if event.value == 1 and not crashed:
                crashed = True
                held[1].ack()  # 1 is done, 0 is not: the crash requeues 0
                raise ConnectionError("transient")
            if len(held) >= 2 or event.value == 3:
                for each in held:
                    each.ack()
                held.clear()

    async with running(app):
        await produce(app, "src", list(range(4)))
        await wait_for(lambda: crashed)
        for _ in range(3):
            await trio.sleep(0.01)
            assert (committed(broker, "src") or 0) == 0  # never 1 while 0 waits
        await wait_for(lambda: committed(broker, "src") == 4)
    assert seen == [0, 1, 0, 2, 3]


async def test_failed_group_by_copy_stops_the_worker(app_factory: AppFactory, broker: MemoryBroker) -> None:
    """Seen: 49 of 50 processed, source commit stuck at 0, no error, shutdown used its whole timeout."""
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=str, value_serializer="raw", partitions=1)

    def first_letter(value: Any) -> str:
        return str(value)[:1]

    @app.agent(source)
    async def regroup(stream: streamtrio.Stream[Any]) -> None:
        async for _value in stream.group_by(first_letter, name="letter"):
            pass

    async with app.open_client():
        for i in range(10):
            app.producer.send_nowait("src", None, b"y" * (2000 if i == 6 else 3), partition=0)
        await app.producer.flush()
    broker.max_message_bytes = 1500  # the copy of offset 6 no longer fits
    with trio.fail_after(10):
        with pytest.raises(streamtrio.AgentError, match=r"offset=6 failed.*MSG_SIZE_TOO_LARGE"):
            await streamtrio.serve(app)
    # never past the failing offset (the group_by subscription's rebalance may pre-empt a commit)
    assert (committed(broker, "src") or 0) <= 6


async def test_forward_sends_the_original_bytes_headers_and_timestamp(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Seen: forward() re-encoded the value (an unknown JSON field dropped) and re-stamped it."""

    class Order(streamtrio.Record):
        id: int

    app = app_factory(commit_interval=0.01)
    source = app.topic("orders", value_type=Order, partitions=1)
    app.topic("copies", value_type=Order, partitions=1)

    @app.agent(source)
    async def fwd(stream: streamtrio.Stream[Order]) -> None:
        async for event in stream.events():
            await event.forward("copies")

    raw = b'{"id": 1, "extra": "kept"}'
    async with app.open_client():
        await app.producer.send("orders", b"k", raw, partition=0, timestamp=1000.5, headers=[("h", b"v")])
    async with running(app):
        await wait_for(lambda: len(broker.messages("copies", 0)) == 1)
    [copy] = broker.messages("copies", 0)
    assert (copy.key, copy.value, copy.timestamp, copy.headers) == (b"k", raw, 1000.5, [("h", b"v")])


async def test_reply_to_a_foreign_topic_is_a_bad_event(app_factory: AppFactory, broker: MemoryBroker) -> None:
    """Seen: a streamtrio-reply-to header made the agent produce to whatever topic it named."""
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)

    @app.agent(source, on_error="dead_letter")
    async def answer(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value + 1

    headers = [(REPLY_TO, b"payments"), (CORRELATION_ID, b"c1")]
    async with running(app):
        await produce(app, "src", [1], headers=headers)
        await wait_for(lambda: committed(broker, "src") == 1)
    assert "payments" not in broker.topics()
    # The dead-letter topic has the source's partition count (1).
    [dead] = broker.messages("src-dlq", 0)
    assert b"not a reply topic" in dict(dead.headers or [])["streamtrio-error"]


async def test_a_full_producer_holds_intake_and_loses_nothing(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """An output partition that cannot be written: the queue stays bounded, nothing is lost."""
    app = app_factory(commit_interval=0.01, producer_max_queued_messages=50, stream_buffer_maxsize=64)
    source = app.topic("src", value_type=int, partitions=1)
    out = app.topic("out", value_type=int, partitions=1)
    processed: list[int] = []

    @app.agent(source, sink=[out])
    async def copy(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            processed.append(value)
            yield value

    broker.create_topic("out", 1)
    broker.block_topic("out")
    total = 1000
    async with running(app) as worker:
        await produce(app, "src", list(range(total)))
        await wait_for(lambda: worker.producer is not None and worker.producer.bound.full)
        for _ in range(10):
            await trio.sleep(0.01)
            assert worker.producer.bound.messages <= 51
        assert len(processed) <= 51
        assert committed(broker, "src") in (None, 0)
        broker.unblock_topic("out")
        await wait_for(lambda: committed(broker, "src") == total)
    assert values(broker, "out") == list(range(total))


async def test_exactly_once_commit_never_waits_for_a_batch_being_collected(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Seen: one agent holding a partial take(10) stopped every commit of the worker."""
    app = app_factory(
        processing_guarantee="exactly_once",
        commit_interval=0.01,
        rebalance_drain_timeout=0.5,
        shutdown_timeout=1,  # the partial batch never completes: the stop does not wait for it
    )
    batches = app.topic("batches", value_type=int, partitions=1)
    plain = app.topic("plain", value_type=int, partitions=1)
    seen: list[int] = []

    @app.agent(batches)
    async def collect(stream: streamtrio.Stream[int]) -> None:
        async for _batch in stream.take(10):  # never filled: 3 events arrive
            pass

    @app.agent(plain)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)

    async with running(app) as worker:
        await produce(app, "batches", [1, 2, 3])
        await produce(app, "plain", list(range(20)))
        await wait_for(lambda: committed(broker, "plain") == 20)
        assert worker.committer is not None
        stats = worker.committer.statistics()
        assert stats.postponed == 0
        assert stats.pauses > 0 and stats.pause_max < 0.5
    assert (committed(broker, "batches") or 0) == 0  # held across steps: not committed yet


async def test_agent_test_context_works_for_exactly_once_apps(app_factory: AppFactory) -> None:
    """Seen: TypeError: cannot trace the lanes of a GatedInbox."""
    app = app_factory(processing_guarantee="exactly_once")
    topic = app.topic("numbers", value_type=int, partitions=1)

    @app.agent(topic)
    async def double(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value * 2

    async with double.test_context() as ctx:
        await ctx.put(21)
        assert ctx.results == [42]
