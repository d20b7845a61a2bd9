"""App registry behaviour: topics, services, leader timers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


def test_topic_description_helpers(app_factory: AppFactory) -> None:
    app = app_factory(topic_partitions=6)
    orders = app.topic("orders", key_type=str, value_type=int, retention="1h", compacting=True, deleting=True)
    assert orders.get_topic_name() == "orders"
    spec = orders.spec("orders")
    assert spec.partitions == 6
    assert spec.config == {"cleanup.policy": "compact,delete", "retention.ms": "3600000"}
    derived = orders.derive(suffix="-v2", partitions=3)
    assert derived.get_topic_name() == "orders-v2"
    assert (derived.partitions, derived.key_type, derived.value_type) == (3, str, int)
    with pytest.raises(ValueError, match="several"):
        app.topic("a", "b").get_topic_name()
    with pytest.raises(TypeError, match="pattern"):
        app.topic(pattern="orders-.*").get_topic_name()
    with pytest.raises(TypeError, match="names or a pattern"):
        app.topic("x", pattern="y")


async def test_declare_creates_missing_topics_only(app_factory: AppFactory, broker: MemoryBroker) -> None:
    app = app_factory()
    broker.create_topic("existing", 2)
    await app.topic("existing", partitions=5).declare()
    await app.topic("fresh", partitions=3).declare()
    assert broker.topics()["existing"] == 2  # never altered
    assert broker.topics()["fresh"] == 3


async def test_service_runs_with_the_worker(app_factory: AppFactory) -> None:
    app = app_factory()
    events: list[str] = []

    @app.service
    class Heartbeat:
        def __init__(self, app: streamtrio.App) -> None:
            self.app = app

        async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
            events.append("started")
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                events.append("stopped")

    @app.service
    async def plain() -> None:
        events.append("plain")

    async with running(app):
        await wait_for(lambda: "plain" in events)
        assert events[0] == "started"
    assert events[-1] == "stopped"


async def test_failing_service_stops_the_worker(app_factory: AppFactory) -> None:
    app = app_factory()

    @app.service
    async def broken() -> None:
        raise OSError("disk gone")

    with pytest.raises(streamtrio.WorkerError, match="service broken raised OSError: disk gone"):
        await streamtrio.serve(app)


async def test_on_leader_timer_runs_on_one_worker_only(
    app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    runs: dict[str, int] = {"a": 0, "b": 0}

    def make(name: str) -> streamtrio.App:
        app = app_factory()

        @app.timer(interval=1.0, on_leader=True)
        async def lead() -> None:
            runs[name] += 1

        return app

    first, second = make("a"), make("b")
    async with running(first), running(second):
        await trio.sleep(10.5)
    assert runs["a"] + runs["b"] >= 9
    assert 0 in runs.values(), runs  # exactly one worker is the leader


def test_duplicate_agent_names_are_refused(app_factory: AppFactory) -> None:
    app = app_factory()

    async def fun(stream: Any) -> None:
        pass

    app.agent(name="dup")(fun)
    with pytest.raises(streamtrio.ConfigurationError, match="'dup' is already registered"):
        app.agent(name="dup")(fun)
