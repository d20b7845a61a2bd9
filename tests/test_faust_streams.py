"""Faust's stream surface on the memory transport: stream.current_event,
active_partitions, ``async with event``, processors, topic.stream() in a task,
kvmap, and the asyncio hint of agent errors. Assertions are committed offsets,
messages on topics and what the app code saw."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


async def produce(app: streamtrio.App, topic: str, values: list[Any], *, partition: int = 0) -> None:
    async with app.open_client():
        for n, value in enumerate(values):
            app.producer.send_nowait(
                topic,
                f"k{n}".encode(),
                json.dumps(value).encode(),
                partition=partition,
                headers=[("h", b"v")],
            )
        await app.producer.flush()


def committed(broker: MemoryBroker, topic: str, partition: int = 0, group: str = "testapp") -> int | None:
    return broker.committed(group).get(TP(topic, partition))


async def test_current_event_and_active_partitions(app_factory: AppFactory) -> None:
    app = app_factory(commit_interval=0.05)
    source = app.topic("src", key_type=str, value_type=int, partitions=2)
    isolated_src = app.topic("iso", value_type=int, partitions=2)
    seen: list[tuple[Any, ...]] = []
    isolated: list[Any] = []

    @app.agent(source)
    async def watch(stream: streamtrio.Stream[int]) -> None:
        assert stream.current_event is None and stream.active_partitions is None
        async for value in stream:
            event = stream.current_event
            assert event is not None and event is streamtrio.current_event()
            m = event.message
            seen.append((event.key, event.value, value, m.topic, m.partition, m.offset, event.headers))

    @app.agent(isolated_src, isolated_partitions=True)
    async def per_partition(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            event = stream.current_event
            assert event is not None
            isolated.append((stream.active_partitions, event.message.partition))

    async with running(app):
        await produce(app, "src", [10, 11], partition=1)
        await produce(app, "iso", [1], partition=0)
        await produce(app, "iso", [2], partition=1)
        await wait_for(lambda: len(seen) == 2 and len(isolated) == 2)
    assert seen == [
        ("k0", 10, 10, "src", 1, 0, [("h", b"v")]),
        ("k1", 11, 11, "src", 1, 1, [("h", b"v")]),
    ]
    assert sorted(isolated, key=lambda pair: pair[1]) == [({TP("iso", 0)}, 0), ({TP("iso", 1)}, 1)]


async def test_async_with_event_acks_only_the_agents_part(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """``async with event`` acks on exit, but an output still in flight holds the commit."""
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)
    out = app.topic("out", value_type=int, partitions=1)
    events: list[streamtrio.Event[int]] = []

    @app.agent(source)
    async def manual(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.noack().events():
            async with event:
                if event.value == 2:
                    broker.block_topic("out")
                out.send_soon(value=event.value)
            events.append(event)

    broker.create_topic("out", 1)
    async with running(app):
        await produce(app, "src", [0, 1, 2, 3])
        await wait_for(lambda: len(events) == 4)
        assert all(e.acked for e in events)
        assert [e.done for e in events[2:]] == [False, False]  # acked, outputs in flight
        for _ in range(10):
            await trio.sleep(0.01)
            assert (committed(broker, "src") or 0) <= 2
        broker.unblock_topic("out")
        await wait_for(lambda: committed(broker, "src") == 4)
    assert [json.loads(m.value or b"") for m in broker.messages("out", 0)] == [0, 1, 2, 3]


async def test_async_with_event_that_raises_leaves_it_unacked(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)

    @app.agent(source)
    async def manual(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.noack().events():
            async with event:
                if event.value == 2:
                    raise ValueError("bad value")

    await produce(app, "src", [0, 1, 2, 3])
    with pytest.raises(streamtrio.AgentError, match="bad value"):
        await streamtrio.serve(app)
    assert committed(broker, "src") == 2  # 0 and 1 done; 2 failed, nothing after it


async def test_processors_sync_and_async_on_agent_and_app_stream(app_factory: AppFactory) -> None:
    app = app_factory(commit_interval=0.05)
    source = app.topic("src", value_type=int, partitions=1)
    got: list[int] = []

    async def double(value: int) -> int:
        await trio.lowlevel.checkpoint()
        return value * 2

    @app.agent(source)
    async def processed(stream: streamtrio.Stream[int]) -> None:
        stream.add_processor(lambda v: v + 1)
        stream.add_processor(double)
        async for value in stream:
            got.append(value)

    async with running(app):
        await produce(app, "src", [1, 2, 3])
        await wait_for(lambda: len(got) == 3)
    assert got == [4, 6, 8]

    plain = app.stream([1, 2, 3], processors=[str, lambda s: s * 2])
    assert [v async for v in plain] == ["11", "22", "33"]


async def test_a_failing_processor_fails_the_event(app_factory: AppFactory, broker: MemoryBroker) -> None:
    app = app_factory(commit_interval=0.01)
    source = app.topic("src", value_type=int, partitions=1)

    def check(value: int) -> int:
        if value == 1:
            raise ValueError("processor refused 1")
        return value

    @app.agent(source)
    async def agent(stream: streamtrio.Stream[int]) -> None:
        stream.add_processor(check)
        async for _ in stream:
            pass

    await produce(app, "src", [0, 1, 2])
    with pytest.raises(streamtrio.AgentError, match=r"processor refused 1.*offset=1"):
        await streamtrio.serve(app)
    assert committed(broker, "src") == 1


async def test_topic_stream_in_a_task_acks_and_commits_like_an_agent(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01)
    withdrawals = app.topic("withdrawals", value_type=int, partitions=2)
    out = app.topic("out", value_type=int, partitions=1)
    # created before the worker starts: the worker joins the group for it
    doubled = app.stream(withdrawals, processors=[lambda v: v * 2])
    seen: list[tuple[int, int]] = []

    @app.task
    async def audit() -> None:
        async for value in doubled:
            event = doubled.current_event
            assert event is not None
            seen.append((event.message.partition, value))
            if value == 40:
                broker.block_topic("out")
            if event.message.partition == 1:
                out.send_soon(value=value)

    broker.create_topic("out", 1)
    async with running(app):
        await produce(app, "withdrawals", [1, 2], partition=0)
        await produce(app, "withdrawals", [10, 20, 30], partition=1)
        await wait_for(lambda: len(seen) == 5)
        # the send of the event at partition 1 offset 1 is not delivered: nothing from it on is committed
        for _ in range(10):
            await trio.sleep(0.01)
            assert (committed(broker, "withdrawals", 1) or 0) <= 1
        broker.unblock_topic("out")
        await wait_for(lambda: committed(broker, "withdrawals", 1) == 3)
        await wait_for(lambda: committed(broker, "withdrawals", 0) == 2)
    assert sorted(seen) == [(0, 2), (0, 4), (1, 20), (1, 40), (1, 60)]
    assert sorted(json.loads(m.value or b"") for m in broker.messages("out", 0)) == [20, 40, 60]


async def test_topic_stream_beside_an_agent_gets_every_message(app_factory: AppFactory) -> None:
    """Faust's documented pattern: ``topic.stream()`` created inside a task."""
    app = app_factory(commit_interval=0.01)
    orders = app.topic("orders", value_type=int, partitions=1)
    by_agent: list[int] = []
    by_task: list[int] = []

    @app.agent(orders)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            by_agent.append(value)

    @app.task
    async def audit() -> None:
        async for value in orders.stream():
            by_task.append(value)

    async with running(app):
        await wait_for(lambda: bool(app._worker and app._worker._dynamic_topics))
        await produce(app, "orders", [1, 2, 3])
        await wait_for(lambda: len(by_agent) == 3 and len(by_task) == 3)
    assert by_agent == by_task == [1, 2, 3]


async def test_topic_stream_in_a_task_of_an_app_without_agents(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Faust's example with only a task: the worker joins its group anyway (as Faust's
    does), so ``topic.stream()`` opened in the task at run time is consumed."""
    app = app_factory(commit_interval=0.01)
    orders = app.topic("orders", value_type=int, partitions=1)
    seen: list[int] = []

    @app.task
    async def audit() -> None:
        async for value in orders.stream():
            seen.append(value)

    async with running(app):
        await wait_for(lambda: bool(app._worker and app._worker._dynamic_topics))
        await produce(app, "orders", [1, 2, 3])
        await wait_for(lambda: seen == [1, 2, 3])
        await wait_for(lambda: committed(broker, "orders", 0) == 3)


async def test_kvmap_yields_the_replies(app_factory: AppFactory) -> None:
    app = app_factory(commit_interval=0.05)

    @app.agent()
    async def square(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value * value

    async with running(app):
        replies = [r async for r in square.kvmap([("a", 2), ("b", 3)])]
    assert replies == [4, 9]


async def test_asyncio_in_an_agent_names_the_trio_replacement(app_factory: AppFactory) -> None:
    import asyncio

    app = app_factory()
    source = app.topic("src", value_type=int, partitions=1)

    @app.agent(source)
    async def sleepy(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            await asyncio.sleep(1)

    await produce(app, "src", [1])
    with pytest.raises(streamtrio.AgentError, match=r"no running event loop.*trio\.sleep"):
        await streamtrio.serve(app)


async def test_a_task_raising_on_a_stream_event_stops_the_worker_uncommitted(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01)
    orders = app.topic("orders", value_type=int, partitions=1)
    stream = orders.stream()

    @app.task
    async def audit() -> None:
        async for value in stream:
            if value == 2:
                raise ValueError("audit failed on 2")

    await produce(app, "orders", [0, 1, 2, 3])
    began = trio.current_time()
    with pytest.raises(streamtrio.WorkerError, match="audit failed on 2"):
        await streamtrio.serve(app)
    assert trio.current_time() - began < app.conf.shutdown_timeout
    assert committed(broker, "orders") == 2  # 0 and 1 done; 2 failed, nothing after it
