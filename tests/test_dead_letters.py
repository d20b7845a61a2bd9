"""Dead-letter topics: created when the first letter is sent, with the source topic's partitions."""

from __future__ import annotations

from collections.abc import Callable

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


async def test_no_dead_letter_topic_until_a_letter_is_sent(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.01, topic_partitions=8)
    payments = app.topic("payments", value_type=int, partitions=3)
    seen: list[int] = []

    @app.agent(payments, on_error="dead_letter")
    async def pay(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            if value < 0:
                raise ValueError("negative payment")
            seen.append(value)

    async with running(app):
        for value in (1, 2):
            await payments.send(value=value, partition=0)
        await wait_for(lambda: seen == [1, 2])
        assert "payments-dlq" not in broker.topics()  # nothing failed: nothing created
        await payments.send(value=-5, key=b"k", partition=2)
        await wait_for(lambda: broker.committed(app.id).get(TP("payments", 2)) == 1)
    assert broker.topics()["payments-dlq"] == 3  # the source's count, not topic_partitions
    [dead] = [m for p in range(3) for m in broker.messages("payments-dlq", p)]
    assert (dead.key, dead.value) == (b"k", b"-5")


async def test_a_decode_policy_alone_creates_no_topic(app_factory: AppFactory, broker: MemoryBroker) -> None:
    app = app_factory(commit_interval=0.01, value_decode_error="dead_letter")
    events = app.topic("events", value_type=int, partitions=2)
    seen: list[int] = []

    @app.agent(events)
    async def read(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)

    raw = app.topic("events", value_serializer="raw")
    async with running(app):
        await raw.send(value=b"1", partition=1)
        await wait_for(lambda: seen == [1])
        assert "events-dlq" not in broker.topics()
        await raw.send(value=b"{oops", partition=1)
        await raw.send(value=b"2", partition=1)
        await wait_for(lambda: seen == [1, 2])
        await wait_for(lambda: "events-dlq" in broker.topics())
    assert broker.topics()["events-dlq"] == 2
