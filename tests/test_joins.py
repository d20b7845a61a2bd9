"""Stream-table joins on the memory transport, against references computed from the inputs."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]
PARTITIONS = 4


class Order(streamtrio.Record):
    id: int
    customer: str
    country: str
    amount: int


def join_app(
    app_factory: AppFactory, how: str, *, table_partitions: int = PARTITIONS, by_field: bool = False
) -> tuple[streamtrio.App, list[tuple[int, Any]], list[int], list[int]]:
    app = app_factory(commit_interval=0.05)
    customers_topic = app.topic("customers", key_type=str, value_type=str, partitions=PARTITIONS)
    orders = app.topic("orders", key_type=str, value_type=Order, partitions=PARTITIONS)
    customers = app.Table("customers", key_type=str, value_type=str, partitions=table_partitions)
    joined: list[tuple[int, Any]] = []
    loaded = [0]
    seen = [0]

    @app.agent(customers_topic)
    async def load(stream: streamtrio.Stream[str]) -> None:
        async for event in stream.events():
            customers[event.key] = event.value
            loaded[0] += 1

    @app.agent(orders)
    async def enrich(stream: streamtrio.Stream[Order]) -> None:
        key = Order.customer if by_field else None
        async for order, name in stream.join(customers, key=key, how=how):  # type: ignore[arg-type]
            joined.append((order.id, name))
            seen[0] = order.id

    return app, joined, loaded, seen


async def send(app: streamtrio.App, topic: str, items: list[tuple[str, Any]]) -> None:
    target = app._topic_named(topic)
    async with app.open_client():
        for key, value in items:
            target.send_soon(key=key, value=value)
        await app.producer.flush()


@pytest.mark.parametrize("how", ["inner", "left"])
async def test_stream_table_join_matches_the_reference(
    app_factory: AppFactory, broker: MemoryBroker, how: str
) -> None:
    rng = random.Random(how)
    customers = {f"c{i}": f"name-{i}" for i in range(0, 40, 2)}  # odd ids have no customer
    orders = [Order(id=i, customer=f"c{rng.randrange(40)}", country="x", amount=i) for i in range(500)]
    orders.append(Order(id=500, customer="sentinel", country="x", amount=0))
    customers["sentinel"] = "last"
    app, joined, loaded, _ = join_app(app_factory, how)
    async with running(app):
        await send(app, "customers", list(customers.items()))
        await wait_for(lambda: loaded[0] == len(customers))
        await send(app, "orders", [(o.customer, o) for o in orders])
        await wait_for(lambda: (500, "last") in joined)
        await wait_for(lambda: sum(broker.committed(app.id).get(TP("orders", p), 0) for p in range(4)) == 501)
    expected = [(o.id, customers.get(o.customer)) for o in orders]
    if how == "inner":
        expected = [(i, name) for i, name in expected if name is not None]
    assert sorted(joined, key=lambda item: item[0]) == expected
    # the skipped events of an inner join are acked: every offset is committed


async def test_a_table_with_another_partition_count_stops_the_worker_at_start(
    app_factory: AppFactory,
) -> None:
    app, joined, _, _ = join_app(app_factory, "inner", table_partitions=2)
    with pytest.raises(streamtrio.AgentError, match="not co-partitioned") as info:
        await streamtrio.serve(app)
    assert isinstance(info.value.__cause__, streamtrio.ConfigurationError)
    assert "topic 'orders' has 4 partitions but table 'customers' has 2" in str(info.value)
    assert joined == []


async def test_a_join_key_the_stream_is_not_partitioned_by_is_refused(app_factory: AppFactory) -> None:
    app, _, _, _ = join_app(app_factory, "inner", by_field=True)
    async with app.open_client():
        # keyed by order id, joined by customer: the keys live on other partitions
        app._topic_named("customers").send_soon(key="c1", value="one")
        for i in range(20):
            app._topic_named("orders").send_soon(
                key=str(i), value=Order(id=i, customer="c1", country="x", amount=1)
            )
        await app.producer.flush()
    with pytest.raises(streamtrio.AgentError, match="not partitioned by the join key"):
        await streamtrio.serve(app)


async def test_a_global_table_joins_on_any_field_without_co_partitioning(app_factory: AppFactory) -> None:
    app = app_factory(commit_interval=0.05)
    countries = app.topic("countries", key_type=str, value_type=str, partitions=1)
    orders = app.topic("orders", key_type=str, value_type=Order, partitions=PARTITIONS)
    names = app.GlobalTable("country_names", key_type=str, value_type=str, partitions=1)
    joined: list[tuple[int, str | None]] = []
    loaded = [0]

    @app.agent(countries)
    async def load(stream: streamtrio.Stream[str]) -> None:
        async for event in stream.events():
            names[event.key] = event.value
            loaded[0] += 1

    @app.agent(orders)
    async def enrich(stream: streamtrio.Stream[Order]) -> None:
        async for order, name in stream.left_join(names, key=lambda o: o.country):
            joined.append((order.id, name))

    async with running(app):
        await send(app, "countries", [("fr", "France"), ("de", "Germany")])
        await wait_for(lambda: loaded[0] == 2)
        await wait_for(lambda: len(list(names.items())) == 2)
        countries_of = ["fr", "de", "xx"]
        await send(
            app,
            "orders",
            [
                (str(i), Order(id=i, customer=str(i), country=countries_of[i % 3], amount=1))
                for i in range(30)
            ],
        )
        await wait_for(lambda: len(joined) == 30)
    reference = {"fr": "France", "de": "Germany"}
    assert sorted(joined) == [(i, reference.get(countries_of[i % 3])) for i in range(30)]


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
async def test_table_table_join_follows_both_sides(app_factory: AppFactory, how: str) -> None:
    app = app_factory(commit_interval=0.05)
    updates = app.topic("updates", key_type=str, value_type=str, partitions=PARTITIONS)
    names = app.Table("names", key_type=str, value_type=str, partitions=PARTITIONS)
    emails = app.Table("emails", key_type=str, value_type=str, partitions=PARTITIONS)
    joined = names.join(emails, how=how)  # type: ignore[arg-type]
    applied = [0]
    model: dict[str, dict[str, str]] = {"names": {}, "emails": {}}

    @app.agent(updates)
    async def apply(stream: streamtrio.Stream[str]) -> None:
        async for event in stream.events():
            side, _, value = event.value.partition("=")
            table = names if side == "name" else emails
            if value:
                table[event.key] = value
            else:
                table.pop(event.key, None)
            applied[0] += 1

    rng = random.Random(how)
    ops = []
    for _ in range(300):
        key = f"u{rng.randrange(30)}"
        side = rng.choice(["name", "email"])
        value = "" if rng.random() < 0.2 else f"{side}-{rng.randrange(1000)}"
        ops.append((key, side, value))
    for key, side, value in ops:
        target = model["names" if side == "name" else "emails"]
        if value:
            target[key] = value
        else:
            target.pop(key, None)
    left, right = model["names"], model["emails"]
    if how == "inner":
        keys = left.keys() & right.keys()
    elif how == "left":
        keys = set(left)
    else:
        keys = left.keys() | right.keys()
    expected = {k: (left.get(k), right.get(k)) for k in keys}

    async with running(app):
        await send(app, "updates", [(key, f"{side}={value}") for key, side, value in ops])
        await wait_for(lambda: applied[0] == len(ops))
        assert dict(joined.items()) == expected
        assert len(joined) == len(expected)
        missing = next(f"u{i}" for i in range(100) if f"u{i}" not in expected)
        assert missing not in joined
        with pytest.raises(KeyError):
            joined[missing]


def test_table_join_checks(app_factory: AppFactory) -> None:
    app = app_factory()
    a = app.Table("a", partitions=4)
    b = app.Table("b", partitions=2)
    with pytest.raises(streamtrio.ConfigurationError, match="not co-partitioned"):
        a.join(b)["k"]
    with pytest.raises(streamtrio.ConfigurationError, match="windowed"):
        a.join(app.Table("w").tumbling(10).table)
    with pytest.raises(streamtrio.ConfigurationError, match="how"):
        a.join(app.GlobalTable("g"), how="cross")  # type: ignore[arg-type]
