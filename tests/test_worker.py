"""The worker on the memory transport: processing order, acks, commits, crashes, shutdown."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


async def produce(app: streamtrio.App, topic: streamtrio.Topic[Any], items: list[tuple[Any, Any]]) -> None:
    async with app.open_client():
        for key, value in items:
            topic.send_soon(key=key, value=value)
        await app.producer.flush()


def end_offsets(broker: MemoryBroker, topic: str) -> dict[TP, int]:
    return {TP(topic, p): broker.end_offset(TP(topic, p)) for p in range(broker.topics()[topic])}


def all_messages(broker: MemoryBroker, topic: str) -> list[streamtrio.Message]:
    return [m for p in range(broker.topics()[topic]) for m in broker.messages(topic, p)]


async def test_every_event_processed_in_partition_order_and_committed(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.05)
    numbers = app.topic("numbers", key_type=str, value_type=int, partitions=8)
    seen: dict[int, list[tuple[int, int]]] = defaultdict(list)

    @app.agent(numbers)
    async def collect(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            seen[event.message.partition].append((event.message.offset, event.value))

    total = 2000
    async with running(app):
        await produce(app, numbers, [(f"k{i % 37}", i) for i in range(total)])
        await wait_for(lambda: sum(map(len, seen.values())) == total)
        ends = end_offsets(broker, "numbers")
        await wait_for(lambda: broker.committed("testapp") == {tp: o for tp, o in ends.items() if o})

    assert sum(ends.values()) == total
    for partition, got in seen.items():
        offsets = [offset for offset, _ in got]
        assert offsets == list(range(len(got))), f"partition {partition} out of order"
        values = [value for _, value in got]
        assert values == sorted(values)  # produced in increasing order per key/partition
        # the memory broker stored exactly what the agent saw
        stored = [int(m.value or b"0") for m in broker.messages("numbers", partition)]
        assert values == stored


async def test_commit_never_passes_an_event_in_flight(app_factory: AppFactory, broker: MemoryBroker) -> None:
    """With concurrency=2, a later event finishing first must not let the commit pass the earlier one."""
    app = app_factory(commit_interval=0.01)
    topic = app.topic("slow", value_type=int, partitions=1)
    release_first = trio.Event()
    finished: list[int] = []

    @app.agent(topic, concurrency=2)
    async def work(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value == 0:
                await release_first.wait()
            finished.append(value)

    async with running(app):
        await produce(app, topic, [(None, v) for v in range(5)])
        await wait_for(lambda: finished == [1, 2, 3, 4])
        await trio.sleep(0.1)  # several commit intervals pass
        assert broker.committed("testapp").get(TP("slow", 0), 0) == 0
        release_first.set()
        await wait_for(lambda: broker.committed("testapp").get(TP("slow", 0)) == 5)
    assert sorted(finished) == [0, 1, 2, 3, 4]


async def test_sinks_receive_what_the_agent_yields(app_factory: AppFactory, broker: MemoryBroker) -> None:
    app = app_factory(commit_interval=0.05)
    source = app.topic("src", value_type=int, partitions=2)
    doubled = app.topic("doubled", value_type=int, partitions=1)
    called: list[int] = []
    via_agent: list[int] = []

    @app.agent(app.channel())
    async def downstream(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            via_agent.append(value)

    async def remember(value: int) -> None:
        called.append(value)

    @app.agent(source, sink=[doubled, remember, downstream])
    async def double(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value * 2

    async with running(app):
        await produce(app, source, [(None, v) for v in range(10)])
        await wait_for(lambda: len(via_agent) == 10 and len(called) == 10)
        await wait_for(lambda: broker.end_offset(TP("doubled", 0)) == 10)
    expected = sorted(v * 2 for v in range(10))
    assert sorted(called) == expected
    assert sorted(via_agent) == expected
    assert sorted(int(m.value or b"") for m in broker.messages("doubled", 0)) == expected


async def test_timer_fires_on_schedule(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = app_factory()
    ticks: list[float] = []

    @app.timer(interval=5.0)
    async def tick() -> None:
        ticks.append(trio.current_time())

    async with running(app):
        start = trio.current_time()
        await trio.sleep(26.0)
    assert [round(t - start, 6) for t in ticks] == [5.0, 10.0, 15.0, 20.0, 25.0]


async def test_task_runs_once_with_app_argument(app_factory: AppFactory) -> None:
    app = app_factory()
    calls: list[streamtrio.App] = []

    @app.task
    async def on_start(the_app: streamtrio.App) -> None:
        calls.append(the_app)

    async with running(app):
        await wait_for(lambda: len(calls) == 1)
        await trio.sleep(0.05)
    assert calls == [app]


async def test_crashing_agent_stops_worker_and_commit_stops_before_failing_event(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01)
    topic = app.topic("orders", value_type=int, partitions=1)
    processed: list[int] = []

    @app.agent(topic)
    async def fragile(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value == 7:
                raise RuntimeError("boom on seven")
            processed.append(value)

    async with app.open_client():
        for v in range(20):
            topic.send_soon(value=v)
        await app.producer.flush()

    with pytest.raises(streamtrio.AgentError, match=r"boom on seven.*partition=0 offset=7") as info:
        await streamtrio.serve(app)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert processed == list(range(7))
    assert broker.committed("testapp") == {TP("orders", 0): 7}


async def test_restart_policy_retries_the_failing_event(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01, agent_restart_backoff=0.01)
    topic = app.topic("flaky", value_type=int, partitions=1)
    attempts: dict[int, int] = defaultdict(int)
    done: list[int] = []

    @app.agent(topic, on_error="restart")
    async def flaky(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            attempts[value] += 1
            if value == 3 and attempts[value] < 3:
                raise ConnectionError("transient")
            done.append(value)

    async with running(app):
        await produce(app, topic, [(None, v) for v in range(6)])
        await wait_for(lambda: len(done) == 6)
        await wait_for(lambda: broker.committed("testapp").get(TP("flaky", 0)) == 6)
    assert done == [0, 1, 2, 3, 4, 5]
    assert attempts[3] == 3


async def test_dead_letter_policy_moves_past_a_failing_event(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01)
    topic = app.topic("payments", value_type=int, partitions=1)
    done: list[int] = []

    @app.agent(topic, on_error="dead_letter")
    async def pay(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value == 2:
                raise ValueError("cannot pay 2")
            done.append(value)

    async with running(app):
        await produce(app, topic, [(None, v) for v in range(4)])
        await wait_for(lambda: len(done) == 3)
        await wait_for(lambda: broker.committed("testapp").get(TP("payments", 0)) == 4)
    assert done == [0, 1, 3]
    [dead] = all_messages(broker, "payments-dlq")
    assert dead.value == b"2"
    headers = dict(dead.headers or [])
    assert headers["streamtrio-error"] == b"ValueError: cannot pay 2"
    assert headers["streamtrio-offset"] == b"2"


async def test_undecodable_value_raises_naming_topic_partition_offset(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01)
    topic = app.topic("json-in", value_type=int, partitions=1)
    got: list[int] = []

    @app.agent(topic)
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            got.append(value)

    raw = app.topic("json-in", value_serializer="raw")
    async with app.open_client():
        for payload in (b"1", b"2", b"{not json", b"4"):
            raw.send_soon(value=payload, partition=0)
        await app.producer.flush()

    with pytest.raises(streamtrio.AgentError) as info:
        await streamtrio.serve(app)
    cause = info.value.__cause__
    assert isinstance(cause, streamtrio.DecodeError)
    assert (cause.topic, cause.partition, cause.offset) == ("json-in", 0, 2)
    assert "topic='json-in' partition=0 offset=2" in str(cause)
    assert got == [1, 2]
    assert broker.committed("testapp") == {TP("json-in", 0): 2}


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
async def test_undecodable_value_policies(app_factory: AppFactory, broker: MemoryBroker, policy: str) -> None:
    app = app_factory(commit_interval=0.01, value_decode_error=policy)
    topic = app.topic("events", value_type=int, partitions=1)
    got: list[int] = []

    @app.agent(topic)
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            got.append(value)

    raw = app.topic("events", value_serializer="raw")
    async with running(app):
        for payload in (b"1", b"oops", b"3"):
            await raw.send(value=payload, partition=0)
        await wait_for(lambda: got == [1, 3])
        await wait_for(lambda: broker.committed("testapp").get(TP("events", 0)) == 3)
    if policy == "dead_letter":
        [dead] = all_messages(broker, "events-dlq")
        assert dead.value == b"oops"
        assert dict(dead.headers or [])["streamtrio-reason"] == b"decode"
    else:
        assert "events-dlq" not in broker.topics()


async def test_graceful_stop_commits_what_was_processed(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=3600)  # only the final commit can commit
    topic = app.topic("work", value_type=int, partitions=4)
    count = 0

    @app.agent(topic)
    async def work(stream: streamtrio.Stream[int]) -> None:
        nonlocal count
        async for _ in stream:
            count += 1

    async with running(app):
        await produce(app, topic, [(str(i), i) for i in range(400)])
        await wait_for(lambda: count == 400)
    assert broker.committed("testapp") == {tp: o for tp, o in end_offsets(broker, "work").items() if o}

    # a restart with the same group processes nothing again
    app2 = app_factory(commit_interval=3600)
    topic2 = app2.topic("work", value_type=int, partitions=4)
    again: list[int] = []

    @app2.agent(topic2)
    async def work2(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            again.append(value)

    async with running(app2):
        await trio.sleep(0.1)
    assert again == []


async def test_slow_agent_pauses_partition_instead_of_buffering(app_factory: AppFactory) -> None:
    app = app_factory(stream_buffer_maxsize=50, consumer_max_batch=20, commit_interval=0.05)
    topic = app.topic("firehose", value_type=int, partitions=1)
    gate = trio.Event()
    seen: list[int] = []

    @app.agent(topic)
    async def slow(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            await gate.wait()
            seen.append(value)

    async with running(app) as worker:
        await produce(app, topic, [(None, v) for v in range(1000)])
        await trio.sleep(0.2)
        [(_t, inbox)] = worker._topic_inboxes
        buffered = inbox.buffered()
        assert 50 <= buffered <= 50 + 20, buffered  # paused at the high-water mark
        assert TP("firehose", 0) in worker._paused
        gate.set()
        await wait_for(lambda: len(seen) == 1000)
    assert seen == list(range(1000))


async def test_channel_agent_send_and_cast(app_factory: AppFactory) -> None:
    app = app_factory()
    got: list[tuple[Any, Any]] = []

    @app.agent(app.channel())
    async def echo(stream: streamtrio.Stream[Any]) -> None:
        async for key, value in stream.items():
            got.append((key, value))

    async with running(app):
        await echo.send(key="a", value=1)
        await echo.cast(2, key="b")
        await wait_for(lambda: len(got) == 2)
    assert got == [("a", 1), ("b", 2)]


async def test_agent_on_default_topic_receives_send(app_factory: AppFactory, broker: MemoryBroker) -> None:
    app = app_factory()
    got: list[Any] = []

    @app.agent()
    async def greet(stream: streamtrio.Stream[Any]) -> None:
        async for value in stream:
            got.append(value)

    async with running(app):
        await greet.send(value={"hello": "world"})
        await wait_for(lambda: got == [{"hello": "world"}])
    assert "testapp-greet" in broker.topics()


async def test_stream_operators_filter_enumerate_take(app_factory: AppFactory) -> None:
    app = app_factory()
    evens: list[int] = []
    numbered: list[tuple[int, int]] = []

    async for value in app.stream(range(10)).filter(lambda v: v % 2 == 0):
        evens.append(value)
    async for index, value in app.stream(["a", "b"]).enumerate(start=1):
        numbered.append((index, value))  # type: ignore[arg-type]
    batches = [batch async for batch in app.stream(range(7)).take(3)]
    assert evens == [0, 2, 4, 6, 8]
    assert numbered == [(1, "a"), (2, "b")]
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_take_within_yields_partial_batches_on_time(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = app_factory()
    channel = app.channel()
    batches: list[tuple[float, list[int]]] = []

    @app.agent(channel)
    async def batcher(stream: streamtrio.Stream[int]) -> None:
        async for batch in stream.take(100, within=10.0):
            batches.append((trio.current_time(), batch))

    async with running(app):
        start = trio.current_time()
        for v in range(3):
            await channel.send(value=v)
        await trio.sleep(15.0)
        await channel.send(value=3)
        await trio.sleep(15.0)
    assert [(round(t - start), b) for t, b in batches] == [(10, [0, 1, 2]), (25, [3])]


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(streamtrio.ConfigurationError, match="unknown setting 'brokr'"):
        streamtrio.App("x", brokr="memory://")
    with pytest.raises(streamtrio.ConfigurationError, match=r"'commit_interval'.*duration"):
        streamtrio.App("x", commit_interval="soon")
    with pytest.raises(streamtrio.ConfigurationError, match=r"'topic_partitions'.*integer"):
        streamtrio.App("x", topic_partitions="8")
    with pytest.raises(streamtrio.ConfigurationError, match=r"'processing_guarantee'.*exactly"):
        streamtrio.App("x", processing_guarantee="exactly")
    with pytest.raises(streamtrio.ConfigurationError, match="setting 'broker'"):
        streamtrio.App("x", broker="amqp://localhost").transport  # noqa: B018


def test_settings_from_env_and_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRIO_COMMIT_INTERVAL", "250ms")
    monkeypatch.setenv("STREAMTRIO_WEB_ENABLED", "false")
    app = streamtrio.App("envapp")
    assert app.conf.commit_interval == 0.25
    assert app.conf.web_enabled is False

    class Config:
        topic_partitions = 3
        broker = "memory://"

    app.config_from_object(Config)
    assert app.conf.topic_partitions == 3
    monkeypatch.setenv("STREAMTRIO_TOPIC_PARTITIONS", "eight")
    with pytest.raises(streamtrio.ConfigurationError, match="STREAMTRIO_TOPIC_PARTITIONS"):
        streamtrio.App("envapp")


async def test_co_partitioning_is_checked_at_start(app_factory: AppFactory, broker: MemoryBroker) -> None:
    broker.create_topic("left", 4)
    broker.create_topic("right", 8)
    app = app_factory()
    both = app.topic("left", "right")

    @app.agent(both)
    async def join(stream: streamtrio.Stream[Any]) -> None:
        async for _ in stream:
            pass

    with pytest.raises(streamtrio.TopicError, match="left has 4, right has 8"):
        await streamtrio.serve(app)


async def test_send_without_running_producer_is_a_clear_error(app_factory: AppFactory) -> None:
    app = app_factory()
    topic = app.topic("t")
    with pytest.raises(streamtrio.ClosedError, match="open_client"):
        topic.send_soon(value=1)


async def test_encode_error_names_field(app_factory: AppFactory) -> None:
    app = app_factory()
    topic = app.topic("t", value_serializer="raw")
    async with app.open_client():
        with pytest.raises(streamtrio.EncodeError, match="value"):
            await topic.send(value=object())


async def test_stall_is_reported(
    app_factory: AppFactory,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_factory(commit_interval=1.0)
    topic = app.topic("stuck", value_type=int, partitions=1)
    never = trio.Event()

    @app.agent(topic)
    async def stuck(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            await never.wait()

    caplog.set_level(logging.WARNING)
    async with running(app) as worker:
        await produce(app, topic, [(None, 1), (None, 2)])
        await trio.sleep(45.0)
        assert worker.committer is not None
        assert worker.committer.statistics().stalled == {TP("stuck", 0): 0}
        never.set()
    assert "partition stuck[0] is stalled" in caplog.text


async def test_noack_commits_only_what_the_agent_acked(app_factory: AppFactory, broker: MemoryBroker) -> None:
    app = app_factory(commit_interval=0.01)
    topic = app.topic("manual", value_type=int, partitions=1)
    later: list[streamtrio.Event[int]] = []

    @app.agent(topic)
    async def manual(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.noack().events():
            if event.value < 3:
                event.ack()
            else:
                later.append(event)

    async with running(app):
        await produce(app, topic, [(None, v) for v in range(6)])
        await wait_for(lambda: len(later) == 3)
        await wait_for(lambda: broker.committed("testapp").get(TP("manual", 0)) == 3)
        await trio.sleep(0.05)
        assert broker.committed("testapp")[TP("manual", 0)] == 3
        for event in later:
            event.ack()
        await wait_for(lambda: broker.committed("testapp")[TP("manual", 0)] == 6)


async def test_echo_copies_to_topics(app_factory: AppFactory, broker: MemoryBroker) -> None:
    app = app_factory(commit_interval=0.01)
    source = app.topic("in", key_type=str, value_type=int, partitions=2)
    audit = app.topic("audit", key_type=str, value_type=int, partitions=2)
    seen: list[int] = []

    @app.agent(source)
    async def passthrough(stream: streamtrio.Stream[int]) -> None:
        async for value in stream.echo(audit):
            seen.append(value)

    async with running(app):
        await produce(app, source, [(f"k{v}", v) for v in range(10)])
        await wait_for(lambda: len(seen) == 10)
        await wait_for(lambda: sum(broker.end_offset(TP("audit", p)) for p in range(2)) == 10)
    copied = {(m.key, int(m.value or b"")) for m in all_messages(broker, "audit")}
    assert copied == {(f"k{v}".encode(), v) for v in range(10)}
    # same key -> same partition number as the source
    for p in range(2):
        assert {m.key for m in broker.messages("audit", p)} == {m.key for m in broker.messages("in", p)}


async def test_two_agents_on_one_topic_each_get_every_event(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01)
    topic = app.topic("fanout", value_type=int, partitions=1)
    fast: list[int] = []
    slow: list[int] = []
    gate = trio.Event()

    @app.agent(topic)
    async def first(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            fast.append(value)

    @app.agent(topic)
    async def second(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            await gate.wait()
            slow.append(value)

    async with running(app):
        await produce(app, topic, [(None, v) for v in range(5)])
        await wait_for(lambda: fast == [0, 1, 2, 3, 4])
        await trio.sleep(0.05)
        # the slow subscriber still holds offset 0: nothing may be committed
        assert broker.committed("testapp").get(TP("fanout", 0), 0) == 0
        gate.set()
        await wait_for(lambda: broker.committed("testapp").get(TP("fanout", 0)) == 5)
    assert slow == [0, 1, 2, 3, 4]


async def test_a_worker_without_partitions_says_so(
    app_factory: AppFactory,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen: a group that assigned nothing for minutes, and no word from any worker."""
    settings = {"commit_interval": 1.0, "broker_session_timeout": 2.0}
    first, second = app_factory(**settings), app_factory(**settings)
    for app in (first, second):
        topic = app.topic("single", value_type=int, partitions=1)

        @app.agent(topic)
        async def consume(stream: streamtrio.Stream[int]) -> None:
            async for _ in stream:
                pass

    caplog.set_level(logging.WARNING)
    async with running(first) as a, running(second) as b:
        await trio.sleep(10.0)
        idle = a if not a.source_partitions() else b
        busy = b if idle is a else a
        assert busy.source_partitions() == {TP("single", 0)}
        assert idle.source_partitions() == set()
        membership = idle.app.monitor.stats()["membership"]
        assert membership["assigned_partitions"] == 0
        assert membership["unassigned_for_seconds"] >= 6.0
        assert busy.app.monitor.stats()["membership"]["unassigned_for_seconds"] is None
    assert "group 'testapp': no partition assigned to this worker for" in caplog.text
