"""streamtrio.testing: agent test contexts and test apps run the real stream, ack, table and sink code."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import streamtrio
from streamtrio import TP
from streamtrio._tables.lmdb import LMDBStore
from streamtrio._transports.memory import MemoryBroker
from streamtrio.testing import AppFactory, LeakCheck, advance_time, open_test_app


class Order(streamtrio.Record):
    account: str
    amount: int


# -- agent test contexts ---------------------------------------------------------------


async def test_results_are_what_the_agent_yields_not_its_input(streamtrio_app_factory: AppFactory) -> None:
    """Faust's test helper could report the input as the result; ours captures what is yielded."""
    app = streamtrio_app_factory()
    words = app.topic("words", value_type=str, partitions=1)

    @app.agent(words)
    async def shout(stream: streamtrio.Stream[str]) -> Any:
        async for word in stream:
            if word == "skip":
                continue
            yield word.upper()
            if word == "twice":
                yield word.upper() + "!"

    async with shout.test_context() as ctx:
        first = await ctx.put("hello")
        skipped = await ctx.put("skip")
        twice = await ctx.put("twice")
        assert first.value == "hello"
        assert ctx.results == ["HELLO", "TWICE", "TWICE!"]
        assert ctx.results_for(first) == ["HELLO"]
        assert ctx.results_for(skipped) == []
        assert ctx.results_for(twice) == ["TWICE", "TWICE!"]
        assert [e.value for e in ctx.events] == ["hello", "skip", "twice"]


async def test_put_decodes_through_the_topic_schema(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()
    orders = app.topic("orders", key_type=str, value_type=Order, partitions=4)
    seen: list[tuple[Any, Any, Any]] = []

    @app.agent(orders)
    async def record(stream: streamtrio.Stream[Order]) -> None:
        async for event in stream.events():
            seen.append((event.key, event.value, event.headers))

    async with record.test_context() as ctx:
        event = await ctx.put(
            Order(account="alice", amount=3),
            key="alice",
            partition=2,
            headers={"trace": b"t-1"},
            timestamp=1_700_000_000.5,
        )
    [(key, value, headers)] = seen
    assert key == "alice"
    assert isinstance(value, Order)  # decoded from JSON by the topic's schema
    assert value == Order(account="alice", amount=3)
    assert headers == [("trace", b"t-1")]
    assert event.value is value  # put returns the very event the agent processed
    assert (event.message.topic, event.message.partition, event.message.offset) == ("orders", 2, 0)
    assert event.message.timestamp == 1_700_000_000.5
    raw = ctx.broker.messages("orders", 2)[0]
    assert raw.key == b"alice"
    assert b'"amount"' in (raw.value or b"")


async def test_put_returns_once_acked_and_commits_follow(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory(commit_interval=3600)
    numbers = app.topic("numbers", value_type=int, partitions=1)
    gate = trio.Event()
    done: list[int] = []

    @app.agent(numbers)
    async def slow(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            await gate.wait()
            done.append(value)

    async with slow.test_context() as ctx:
        async with trio.open_nursery() as nursery:
            put_done = trio.Event()

            async def put() -> None:
                event = await ctx.put(7)
                assert event.acked
                put_done.set()

            nursery.start_soon(put)
            await trio.testing.wait_all_tasks_blocked()
            assert not put_done.is_set()  # the agent has not finished the event
            gate.set()
        assert done == [7]
        assert ctx.committed() == {}
        assert await ctx.commit() == {TP("numbers", 0): 1}
        assert ctx.committed() == {TP("numbers", 0): 1}


async def test_sent_reads_back_what_the_agent_produced_in_order(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()
    orders = app.topic("orders", key_type=str, value_type=Order, partitions=2)
    big = app.topic("big-orders", key_type=str, value_type=Order, partitions=1)
    audit = app.topic("audit", value_serializer="raw", partitions=1)
    totals = app.topic("totals", value_type=int, partitions=1)
    loud = app.channel()

    @app.agent(orders, sink=[totals, loud])
    async def process(stream: streamtrio.Stream[Order]) -> Any:
        async for event in stream.events():
            order = event.value
            await audit.send(value=f"seen {order.account}".encode())
            if order.amount > 100:
                await event.forward(big)
            yield order.amount

    async with process.test_context() as ctx:
        small = await ctx.put(Order(account="a", amount=5), key="a")
        large = await ctx.put(Order(account="b", amount=500), key="b")
        assert [(m.topic, m.value) for m in ctx.sent] == [
            ("audit", b"seen a"),
            ("totals", 5),
            (loud.label, 5),
            ("audit", b"seen b"),
            ("big-orders", Order(account="b", amount=500)),
            ("totals", 500),
            (loud.label, 500),
        ]
        assert [m.value for m in ctx.sent_to(big)] == [Order(account="b", amount=500)]
        assert [m.key for m in ctx.sent_to("big-orders")] == ["b"]
        assert [m.topic for m in ctx.sent_for(small)] == ["audit", "totals", loud.label]
        assert len(ctx.sent_for(large)) == 4
    # what was sent is on the broker, where sent read it from
    assert [m.value for m in ctx.broker.messages("totals", 0)] == [b"5", b"500"]


async def test_agent_error_surfaces_from_put_as_the_original_exception(
    streamtrio_app_factory: AppFactory,
) -> None:
    app = streamtrio_app_factory()
    numbers = app.topic("numbers", value_type=int, partitions=1)
    processed: list[int] = []

    @app.agent(numbers)
    async def fragile(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value == 13:
                raise ValueError("unlucky number")
            processed.append(value)

    async with fragile.test_context() as ctx:
        await ctx.put(1)
        with pytest.raises(ValueError, match="unlucky number") as info:
            await ctx.put(13)
        assert any("topic='numbers' partition=0 offset=1" in note for note in info.value.__notes__)
        with pytest.raises(streamtrio.ClosedError, match="stopped"):
            await ctx.put(2)
    assert processed == [1]
    assert ctx.committed() == {TP("numbers", 0): 1}  # nothing past the failing event


async def test_agent_error_is_raised_by_the_block_when_no_helper_waits(
    streamtrio_app_factory: AppFactory,
) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("numbers", value_type=int, partitions=1))
    async def fragile(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):  # not an ExceptionGroup, not AgentError
        async with fragile.test_context() as ctx:
            await ctx.send(1)
            await trio.sleep_forever()  # interrupted by the crash


async def test_errors_of_the_test_body_pass_through_unwrapped(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("t", partitions=1))
    async def idle(stream: streamtrio.Stream[Any]) -> None:
        async for _ in stream:
            pass

    with pytest.raises(AssertionError, match="the test's own"):
        async with idle.test_context() as ctx:
            await ctx.put(1)
            raise AssertionError("the test's own failure")


async def test_channel_agent(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.channel())
    async def pairs(stream: streamtrio.Stream[int]) -> Any:
        async for key, value in stream.items():
            yield (key, value + 1)

    async with pairs.test_context() as ctx:
        event = await ctx.put(1, key="a")
        await ctx.put(2, key="b")
        assert event.key == "a"
        assert ctx.results == [("a", 2), ("b", 3)]


async def test_take_within_runs_on_the_mock_clock(
    streamtrio_app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("clicks", value_type=int, partitions=1))
    async def batch(stream: streamtrio.Stream[int]) -> Any:
        async for values in stream.take(100, within=30.0):
            yield (trio.current_time(), values)

    async with batch.test_context() as ctx:
        start = trio.current_time()
        for value in range(3):
            await ctx.send(value)
        await ctx.drain()  # the batch closes 30 s of virtual time later
        await ctx.advance(100.0)
        await ctx.put(3)  # its batch closes 30 s after it arrived
    assert [(round(t - start), values) for t, values in ctx.results] == [(30, [0, 1, 2]), (160, [3])]


async def test_only_the_agent_under_test_runs(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()
    topic = app.topic("shared", value_type=int, partitions=1)
    other_saw: list[int] = []
    ticks: list[float] = []

    @app.agent(topic)
    async def mine(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value

    @app.agent(topic)
    async def theirs(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            other_saw.append(value)

    @app.timer(interval=0.001)
    async def tick() -> None:
        ticks.append(trio.current_time())

    async with mine.test_context() as ctx:
        await ctx.put(1)
        await trio.sleep(0.05)
    assert ctx.results == [1]
    assert other_saw == []
    assert ticks == []
    assert set(app.agents) == {"mine", "theirs"}  # restored


async def test_the_app_is_restored_after_the_context(tmp_path: Path) -> None:
    app = streamtrio.App(
        "restored", broker="kafka://kafka.invalid:9092", store="lmdb://", datadir=str(tmp_path)
    )
    results: list[Any] = []

    @app.agent(app.topic("in", partitions=1), sink=[results.append])
    async def echo(stream: streamtrio.Stream[Any]) -> Any:
        async for value in stream:
            yield value

    @app.timer(interval=60.0)
    async def tick() -> None:
        pass

    before = app.conf.as_dict()
    with pytest.raises(RuntimeError, match="boom"):
        async with echo.test_context() as ctx:
            assert app.conf.broker.startswith("memory://streamtrio-test-")
            assert app.conf.store == "memory://"
            await ctx.put("x")
            raise RuntimeError("boom")
    assert app.conf.as_dict() == before
    assert echo.sinks == [results.append]
    assert results == ["x"]  # the app's own sink ran too
    assert len(app._timers) == 1
    assert app._transport_obj is None or app._transport_obj.url == "kafka://kafka.invalid:9092"
    assert app._worker is None
    assert ctx.broker.name not in MemoryBroker._registry


async def test_a_running_app_cannot_be_borrowed(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("t", partitions=1))
    async def idle(stream: streamtrio.Stream[Any]) -> None:
        async for _ in stream:
            pass

    async with open_test_app(app):
        with pytest.raises(streamtrio.WorkerError, match="already running"):
            async with idle.test_context():
                pass


async def test_a_worker_that_cannot_start_raises_its_error(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()
    streamtrio_app_factory.broker.create_topic("left", 2)
    streamtrio_app_factory.broker.create_topic("right", 3)

    @app.agent(app.topic("left", "right"))
    async def join(stream: streamtrio.Stream[Any]) -> None:
        async for _ in stream:
            pass

    with pytest.raises(streamtrio.TopicError, match="left has 2, right has 3"):
        async with join.test_context():
            pass
    assert app.conf.broker == streamtrio_app_factory.broker_url


async def test_an_outer_cancel_scope_stops_the_context(
    streamtrio_app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("t", partitions=1))
    async def idle(stream: streamtrio.Stream[Any]) -> None:
        async for _ in stream:
            pass

    with trio.move_on_after(10) as scope:
        async with idle.test_context() as ctx:
            await ctx.put(1)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(10):
            async with open_test_app(app):
                await trio.sleep_forever()
    assert app._worker is None


async def test_table_writes_go_through_the_real_table(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory(commit_interval=3600)
    words = app.topic("words", key_type=str, value_type=str, partitions=4)
    counts = app.Table(
        "counts",
        default=int,
        key_type=str,
        value_type=int,
        partitions=4,
        key_serializer="raw",
        value_serializer="json",
    )

    @app.agent(words)
    async def count(stream: streamtrio.Stream[str]) -> Any:
        async for event in stream.events():
            counts[event.key] += 1
            yield counts[event.key]

    async with count.test_context() as ctx:
        for _ in range(3):
            event = await ctx.put("w", key="apple")
        await ctx.put("w", key="pear")
        assert ctx.results == [1, 2, 3, 1]
        assert counts["apple"] == 3
        assert ctx.sent == []  # changelogs are not what the agent sent
        partition = event.message.partition
        await ctx.commit()
        changelog = ctx.broker.messages("testapp-counts-changelog", partition)
        assert [(m.key, m.value) for m in changelog if m.key == b"apple"] == [(b"apple", b"3")]
        assert counts.persisted_offset(partition) is not None


async def test_windows_close_on_the_mock_clock_in_a_test_context(
    streamtrio_app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = streamtrio_app_factory()
    views = app.topic("views", key_type=str, value_type=str, partitions=1)
    closed: list[Any] = []
    per_minute = app.Table(
        "per_minute", default=int, partitions=1, on_window_close=lambda k, v: closed.append((k, v))
    ).tumbling(60, expires=60)

    @app.agent(views)
    async def count(stream: streamtrio.Stream[str]) -> Any:
        async for event in stream.events():
            per_minute[event.key] += 1
            yield per_minute[event.key].current()

    start = 1_200_000.0
    async with count.test_context() as ctx:
        for offset in (0, 10, 30, 70):
            await ctx.put("home", key="alice", timestamp=start + offset)
        assert ctx.results == [1, 2, 3, 1]
        assert closed == []
        await ctx.advance(200)
        assert closed == [(("alice", (start, start + 60)), 3), (("alice", (start + 60, start + 120)), 1)]


async def test_group_by_put_waits_for_the_repartitioned_copy(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()
    orders = app.topic("orders", key_type=str, value_type=Order, partitions=4)
    totals = app.Table("totals", default=int, key_type=str, value_type=int, partitions=4)

    @app.agent(orders)
    async def by_account(stream: streamtrio.Stream[Order]) -> Any:
        async for order in stream.group_by(Order.account):
            totals[order.account] += order.amount
            yield (order.account, totals[order.account])

    async with by_account.test_context() as ctx:
        first = await ctx.put(Order(account="alice", amount=5), key="order-1")
        await ctx.put(Order(account="alice", amount=7), key="order-2")
        assert ctx.results_for(first) == [("alice", 5)]
        assert ctx.results == [("alice", 5), ("alice", 12)]
        assert ctx.sent == []  # the repartition topic is plumbing
        assert "testapp-by_account-account-repartition" in ctx.broker.topics()


async def test_concurrency_and_isolated_partitions(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("a", key_type=str, value_type=int, partitions=4), concurrency=3)
    async def many(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value * 10

    @app.agent(app.topic("b", key_type=str, value_type=int, partitions=4), isolated_partitions=True)
    async def isolated(stream: streamtrio.Stream[int]) -> Any:
        async for event in stream.events():
            yield (event.message.partition, event.value)

    async with many.test_context() as ctx:
        for i in range(10):
            await ctx.send(i, key=f"k{i}")
        await ctx.drain()
        assert sorted(ctx.results) == [i * 10 for i in range(10)]
        assert many.actors() == 3

    async with isolated.test_context() as ctx2:
        event = await ctx2.put(5, key="x", partition=3)
        assert (event.message.partition, event.value) == (3, 5)
        assert ctx2.results == [(3, 5)]


async def test_dead_letters_are_part_of_what_the_agent_sent(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("payments", value_type=int, partitions=1), on_error="dead_letter")
    async def pay(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            if value < 0:
                raise ValueError("negative payment")
            yield value

    async with pay.test_context() as ctx:
        await ctx.put(5)
        bad = await ctx.put(-1)  # dead-lettered, acked: put returns
        await ctx.put(6)
        assert ctx.results == [5, 6]
        [dead] = ctx.sent_for(bad)
        assert dead.topic == "payments-dlq"
        assert dead.value == -1
        assert dict(dead.headers)["streamtrio-error"] == b"ValueError: negative payment"


async def test_through_a_topic_put_waits_for_the_copy(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()
    staged = app.topic("staged", value_type=int, partitions=2)

    @app.agent(app.topic("raw", value_type=int, partitions=2))
    async def stage(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream.through(staged):
            yield value + 100

    async with stage.test_context() as ctx:
        event = await ctx.put(1)
        assert ctx.results_for(event) == [101]
        assert ctx.sent == []


async def test_drain_after_many_sends(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("many", value_type=int, partitions=8))
    async def add_one(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value + 1

    async with add_one.test_context() as ctx:
        with trio.fail_after(20):
            for value in range(3000):
                await ctx.send(value, key=str(value).encode())
            await ctx.drain()
        assert sorted(ctx.results) == list(range(1, 3001))


async def test_undecodable_messages_follow_the_apps_policy(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory(value_decode_error="dead_letter")
    events = app.topic("events", value_type=int, partitions=1)
    raw = streamtrio.Topic(app, topics=["events"], value_serializer="raw")  # not registered with the app

    @app.agent(events)
    async def read(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value

    async with open_test_app(app) as test_app:
        for payload in (b"1", b"{oops", b"3"):
            await test_app.send(raw, payload, partition=0)
        await test_app.drain()  # the bad message was acked by the policy
        assert test_app.results(read) == [1, 3]
        assert [m.value for m in test_app.messages("events-dlq")] == [b"{oops"]
        assert [m.value for m in test_app.messages(events)] == [1, b"{oops", 3]


async def test_factory_apps_keep_their_broker(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("t", partitions=1))
    async def idle(stream: streamtrio.Stream[Any]) -> None:
        async for _ in stream:
            pass

    async with idle.test_context() as ctx:
        await ctx.put(1)
    assert ctx.broker is streamtrio_app_factory.broker
    assert streamtrio_app_factory.broker.messages("t", 0)[0].value == b"1"


async def test_rpc_agent_in_a_test_context(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("squares", value_type=int, partitions=2))
    async def square(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value * value

    async with square.test_context() as ctx:
        assert await square.ask(7) == 49
        assert await ctx.put(3) is not None
        assert ctx.results == [49, 9]
        assert ctx.sent == []  # replies travel on the RPC reply topic, which is plumbing


# -- test apps --------------------------------------------------------------------------------


def pipeline(app: streamtrio.App) -> streamtrio.Table:
    """orders -> extract -> amounts (keyed by account) -> total -> the totals table."""
    orders = app.topic("orders", key_type=str, value_type=Order, partitions=4)
    amounts = app.topic("amounts", key_type=str, value_type=int, partitions=4)
    totals = app.Table("totals", default=int, key_type=str, value_type=int, partitions=4)

    @app.agent(orders)
    async def extract(stream: streamtrio.Stream[Order]) -> Any:
        async for order in stream:
            await amounts.send(key=order.account, value=order.amount)
            yield order.amount

    @app.agent(amounts)
    async def total(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            totals[event.key] += event.value

    return totals


async def test_open_test_app_runs_a_pipeline_to_completion(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory(commit_interval=3600)
    pipeline(app)

    async with open_test_app(app) as test_app:
        for i in range(20):
            await test_app.send("orders", Order(account=f"a{i % 3}", amount=i), key=f"order-{i}")
        await test_app.drain()  # both agents, through the intermediate topic
        totals = test_app.table("totals")
        assert {k: totals[k] for k in ("a0", "a1", "a2")} == {
            f"a{r}": sum(i for i in range(20) if i % 3 == r) for r in range(3)
        }
        assert sorted(m.value for m in test_app.messages("amounts")) == list(range(20))
        assert sorted(test_app.results("extract")) == list(range(20))
        committed = await test_app.commit()
        assert sum(off for tp, off in committed.items() if tp.topic == "orders") == 20
    assert sum(o for tp, o in test_app.committed().items() if tp.topic == "amounts") == 20
    assert len(test_app.messages("orders")) == 20  # readable after the block


async def test_a_second_run_on_the_same_broker_drains_at_once(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()
    topic = app.topic("once", value_type=int, partitions=2)

    @app.agent(topic)
    async def consume(stream: streamtrio.Stream[int]) -> Any:
        async for value in stream:
            yield value

    async with open_test_app(app) as first:
        await first.send(topic, 1)
        await first.drain()
    async with open_test_app(app) as second:  # same broker and group: resumes at the commit
        with trio.fail_after(5):
            await second.drain()
        assert second.results(consume) == []
        await second.send(topic, 2)
        await second.drain()
        assert second.results(consume) == [2]


async def test_open_test_app_timers_on_the_mock_clock(
    streamtrio_app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = streamtrio_app_factory()
    beats = app.topic("beats", value_type=float, partitions=1)

    @app.timer(interval=10.0)
    async def beat() -> None:
        await beats.send(value=trio.current_time())

    async with open_test_app(app) as test_app:
        start = trio.current_time()
        await test_app.advance(35.0)
        times = [m.value - start for m in test_app.messages(beats)]
    assert times == [10.0, 20.0, 30.0]


async def test_advance_time_steps_a_manual_mock_clock(
    streamtrio_app_factory: AppFactory, mock_clock: trio.testing.MockClock
) -> None:
    fired: list[float] = []

    async def every(interval: float) -> None:
        while True:
            await trio.sleep(interval)
            fired.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(every, 3.0)
        await advance_time(10.0)
        assert fired == [3.0, 6.0, 9.0]
        assert trio.current_time() == 10.0
        nursery.cancel_scope.cancel()


async def test_advance_time_refuses_real_time() -> None:
    with pytest.raises(RuntimeError, match="autojump_clock"):
        await advance_time(1.0)


async def test_open_test_app_drain_raises_the_agent_error(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()

    @app.agent(app.topic("t", value_type=int, partitions=1))
    async def fragile(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value > 1:
                raise ZeroDivisionError("no")

    async with open_test_app(app) as test_app:
        await test_app.send("t", 1)
        await test_app.drain()
        await test_app.send("t", 2)
        with pytest.raises(ZeroDivisionError):
            await test_app.drain()


async def test_a_failing_timer_surfaces_as_its_own_exception(
    streamtrio_app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = streamtrio_app_factory()

    @app.timer(interval=5.0)
    async def broken() -> None:
        raise OverflowError("timer overflow")

    with pytest.raises(OverflowError, match="timer overflow") as info:
        async with open_test_app(app) as test_app:
            await test_app.advance(60.0)
    assert any("timer broken raised" in note for note in info.value.__notes__)


async def test_open_test_app_serves_web_views(
    streamtrio_app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = streamtrio_app_factory()
    totals = pipeline(app)

    @app.page("/totals/<account>/")
    @app.table_route(totals, match_info="account")
    async def get_total(request: Any, account: str) -> Any:
        return {"account": account, "total": totals[account]}

    async with open_test_app(app, web=True) as test_app:
        await test_app.send("orders", Order(account="a", amount=4), key="o-1")
        await test_app.send("orders", Order(account="a", amount=5), key="o-2")
        await test_app.drain()
        response = await test_app.http.get("/totals/a/")
        assert response.json() == {"account": "a", "total": 9}
        assert test_app.web_url.startswith("http://127.0.0.1:")
    assert app.conf.web_enabled is False


# -- leaks -----------------------------------------------------------------------------------


def test_leak_check_reports_threads_and_open_stores(tmp_path: Path) -> None:
    check = LeakCheck(grace=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="forgotten", daemon=True)
    thread.start()
    store = LMDBStore(tmp_path / "data")
    try:
        problems = check.thread_problems() + check.resource_problems()
        assert any("thread 'forgotten'" in p for p in problems)
        assert any("data.mdb" in p for p in problems)
        assert any("LMDBStore" in p for p in problems)
    finally:
        stop.set()
        thread.join()
        store.close()
    assert check.thread_problems() == []
    assert check.resource_problems() == []


def test_public_testing_api_is_exported() -> None:
    import streamtrio.testing

    for name in streamtrio.testing.__all__:
        assert hasattr(streamtrio.testing, name), name
    assert streamtrio.testing.TestApp.__test__ is False  # importable into test modules
