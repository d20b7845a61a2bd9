"""Testing an agent: put events through its real stream, check what it yields and sends."""

from __future__ import annotations

from typing import Any

import pytest

import streamtrio

app = streamtrio.App("shop", broker="kafka://localhost:9092")


class Order(streamtrio.Record):
    account: str
    amount: int


orders = app.topic("orders", key_type=str, value_type=Order, partitions=8)
large_orders = app.topic("large-orders", key_type=str, value_type=Order)


@app.agent(orders)
async def check(stream: streamtrio.Stream[Order]) -> Any:
    async for event in stream.events():
        order = event.value
        if order.amount <= 0:
            raise ValueError(f"bad amount {order.amount}")
        if order.amount >= 1000:
            await event.forward(large_orders)
        yield order.amount * 100  # in cents


async def test_yields_the_amount_in_cents() -> None:
    async with check.test_context() as ctx:
        event = await ctx.put(Order(account="alice", amount=12), key="alice")
        # the agent got the decoded Record, and yielded something else
        assert event.value == Order(account="alice", amount=12)
        assert ctx.results == [1200]


async def test_large_orders_are_forwarded() -> None:
    async with check.test_context() as ctx:
        await ctx.put(Order(account="bob", amount=5), key="bob")
        big = await ctx.put(Order(account="carol", amount=5000), key="carol")
        assert [(m.key, m.value.amount) for m in ctx.sent_to(large_orders)] == [("carol", 5000)]
        assert ctx.sent_for(big)[0].topic == "large-orders"


async def test_a_bad_order_raises_from_put() -> None:
    async with check.test_context() as ctx:
        with pytest.raises(ValueError, match="bad amount -1"):
            await ctx.put(Order(account="dave", amount=-1), key="dave")
