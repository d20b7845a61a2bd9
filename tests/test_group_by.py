"""group_by: re-keying through a repartition topic, acks after delivery."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest

import streamtrio
from streamtrio import TP
from streamtrio._partitioner import partition_for_key
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


class Order(streamtrio.Record):
    order_id: str
    account_id: str
    amount: int


def all_committed(broker: MemoryBroker, group: str, topic: str) -> bool:
    parts = broker.topics().get(topic, 0)
    ends = {TP(topic, p): broker.end_offset(TP(topic, p)) for p in range(parts)}
    committed = broker.committed(group)
    return all(committed.get(tp, 0) == end for tp, end in ends.items())


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_group_by_field_rekeys_to_the_owning_partition(
    app_factory: AppFactory, broker: MemoryBroker, concurrency: int
) -> None:
    app = app_factory(commit_interval=0.02)
    orders = app.topic("orders", key_type=str, value_type=Order, partitions=8)
    totals: dict[str, int] = defaultdict(int)
    partition_of: dict[str, set[int]] = defaultdict(set)

    @app.agent(orders, concurrency=concurrency)
    async def by_account(stream: streamtrio.Stream[Order]) -> None:
        async for event in stream.group_by(Order.account_id).events():
            order = event.value
            totals[order.account_id] += order.amount
            partition_of[order.account_id].add(event.message.partition)

    expected: Counter[str] = Counter()
    async with running(app):
        async with app.open_client():
            for i in range(800):
                order = Order(order_id=f"o{i}", account_id=f"acct-{i % 13}", amount=i % 7)
                expected[order.account_id] += order.amount
                orders.send_soon(key=order.order_id, value=order)  # keyed by order, not account
            await app.producer.flush()
        await wait_for(lambda: dict(totals) == dict(expected), timeout=20)
        repartition = "testapp-by_account-account_id-repartition"
        await wait_for(lambda: all_committed(broker, "testapp", "orders"))
        await wait_for(lambda: all_committed(broker, "testapp", repartition))
    assert broker.topics()[repartition] == 8
    for account, partitions in partition_of.items():
        # the partition a producer (raw keys, the app default) computes for the new key
        assert partitions == {partition_for_key(account.encode(), 8)}


async def test_group_by_callable_needs_a_name_for_lambdas(app_factory: AppFactory) -> None:
    app = app_factory()
    crashed: list[BaseException] = []

    @app.agent(app.topic("words", partitions=1), on_error="stop")
    async def count(stream: streamtrio.Stream[Any]) -> None:
        try:
            stream.group_by(lambda v: v)
        except streamtrio.ConfigurationError as exc:
            crashed.append(exc)
        async for _ in stream:
            pass

    async with running(app):
        await wait_for(lambda: bool(crashed))
    assert "needs name=" in str(crashed[0])


async def test_failing_key_function_stops_the_worker_without_committing_past_it(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01)
    source = app.topic("items", value_type=int, partitions=1)

    def bad_key(value: int) -> str:
        if value == 4:
            raise KeyError("no key for 4")
        return str(value)

    @app.agent(source)
    async def regroup(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream.group_by(bad_key):
            pass

    async with app.open_client():
        for v in range(8):
            source.send_soon(value=v)
        await app.producer.flush()
    with pytest.raises(streamtrio.AgentError, match="forwarding of agent regroup raised KeyError"):
        await streamtrio.serve(app)
    assert broker.committed("testapp").get(TP("items", 0), 0) <= 4


@pytest.mark.parametrize("kind", ["topic", "channel"])
async def test_through_forwards_and_consumes_back(
    app_factory: AppFactory, broker: MemoryBroker, kind: str
) -> None:
    app = app_factory(commit_interval=0.02)
    source = app.topic("raw", key_type=str, value_type=int, partitions=2)
    target: streamtrio.Channel[Any] = (
        app.topic("cleaned", key_type=str, value_type=int, partitions=2) if kind == "topic" else app.channel()
    )
    seen: list[tuple[str, int, str]] = []

    @app.agent(source)
    async def clean(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.through(target).events():
            seen.append((event.key, event.value, event.message.topic))

    async with running(app):
        async with app.open_client():
            for v in range(20):
                source.send_soon(key=f"k{v}", value=v)
            await app.producer.flush()
        await wait_for(lambda: len(seen) == 20)
        await wait_for(lambda: all_committed(broker, "testapp", "raw"))
    assert sorted(v for _, v, _ in seen) == list(range(20))
    assert {k for k, _, _ in seen} == {f"k{v}" for v in range(20)}
    if kind == "topic":
        assert {t for _, _, t in seen} == {"cleaned"}
        assert sum(broker.end_offset(TP("cleaned", p)) for p in range(2)) == 20
