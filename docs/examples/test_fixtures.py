"""The plugin's fixtures: isolated apps per test, and a real Kafka-protocol broker."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import streamtrio
from streamtrio.testing import AppFactory, KafkaTestBroker, open_test_app


async def test_apps_from_the_factory(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory("greeter", commit_interval=0.1)
    names = app.topic("names", value_type=str, partitions=2)
    greetings = app.topic("greetings", value_type=str, partitions=1)

    @app.agent(names, sink=[greetings])
    async def greet(stream: streamtrio.Stream[str]) -> Any:
        async for name in stream:
            yield f"hello {name}"

    async with open_test_app(app) as test_app:
        await test_app.send(names, "ada")
        await test_app.drain()
    # every app of this test shares one fresh memory broker
    assert [m.value for m in streamtrio_app_factory.broker.messages("greetings", 0)] == [b'"hello ada"']


@pytest.mark.kafka
async def test_on_a_kafka_protocol_broker(
    kafka_broker: KafkaTestBroker, streamtrio_app_factory: AppFactory
) -> None:
    app = streamtrio_app_factory(kafka_broker.unique("echo"), **kafka_broker.app_options())
    source = app.topic(kafka_broker.unique("source"), value_type=int, partitions=1)
    seen: list[int] = []
    arrived = trio.Event()

    @app.agent(source)
    async def echo(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)
            arrived.set()

    # open_test_app runs on the memory broker; on Kafka, run the worker itself
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await source.send(value=42)
        with trio.fail_after(30):
            await arrived.wait()
        worker.stop()
    assert seen == [42]
