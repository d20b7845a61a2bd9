"""The commit loop under broker faults: retriable commit errors, a broker that does not
deliver (memory transport; the Kafka side is in tests/kafka/)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import streamtrio
from streamtrio import TP
from streamtrio._exceptions import CommitError

from .conftest import running, wait_for
from .test_worker import AppFactory


async def test_retriable_commit_errors_are_retried_with_backoff_and_logged(
    streamtrio_app_factory: AppFactory,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = streamtrio_app_factory.broker
    app = streamtrio_app_factory(commit_interval=1.0)
    numbers = app.topic("numbers", value_type=int, partitions=1)
    seen: list[int] = []

    @app.agent(numbers)
    async def work(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)

    async with running(app) as worker:
        await trio.sleep(0.1)
        broker.fail_commits(app.conf.appid, 3, retriable=True)
        for value in range(10):
            await numbers.send(value=value)
        await wait_for(lambda: len(seen) == 10)
        await wait_for(lambda: broker.committed(app.conf.appid).get(TP("numbers", 0)) == 10, timeout=30)
        assert worker.error is None
    retries = [r for r in caplog.records if "commit failed (attempt" in r.getMessage()]
    assert len(retries) == 3, [r.getMessage() for r in caplog.records]
    assert "NOT_COORDINATOR" in retries[0].getMessage()


async def test_a_non_retriable_commit_error_stops_the_worker_naming_it(
    streamtrio_app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    broker = streamtrio_app_factory.broker
    app = streamtrio_app_factory(commit_interval=1.0)
    numbers = app.topic("numbers", value_type=int, partitions=1)

    @app.agent(numbers)
    async def work(stream: streamtrio.Stream[int]) -> None:
        async for _value in stream:
            pass

    @app.task
    async def fault() -> None:
        broker.fail_commits(app.conf.appid, 1, retriable=False)
        await numbers.send(value=1)

    with trio.fail_after(60), pytest.raises(CommitError, match="GROUP_AUTHORIZATION_FAILED") as caught:
        await streamtrio.serve(app)
    assert app.conf.appid in str(caught.value)


async def test_a_commit_waiting_for_deliveries_says_so_within_ten_seconds(
    streamtrio_app_factory: AppFactory,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = streamtrio_app_factory.broker
    app = streamtrio_app_factory(commit_interval=0.5)
    numbers = app.topic("numbers", value_type=int, partitions=1)
    out = app.topic("out", value_type=int, partitions=1)

    @app.agent(numbers, sink=[out])
    async def forward(stream: streamtrio.Stream[int]) -> streamtrio.AgentResult:
        async for value in stream:
            yield value

    async with running(app):
        await trio.sleep(0.1)
        broker.block_topic("out")
        await numbers.send(value=7)
        await trio.sleep(25)
        waits = [r.getMessage() for r in caplog.records if "commit: waiting" in r.getMessage()]
        expected = "commit: waiting 10s for the delivery of 1 produced message"
        assert waits and waits[0].startswith(expected), waits
        assert len(waits) == 2  # at 10 s and 20 s
        assert broker.committed(app.conf.appid).get(TP("numbers", 0), 0) == 0
        broker.unblock_topic("out")
        await wait_for(lambda: broker.committed(app.conf.appid).get(TP("numbers", 0)) == 1, timeout=5)


async def test_a_partition_whose_commits_stand_still_while_it_grows_is_reported(
    streamtrio_app_factory: AppFactory,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = streamtrio_app_factory(commit_interval=1.0)
    numbers = app.topic("numbers", value_type=int, partitions=1)
    seen: list[int] = []

    @app.agent(numbers)
    async def work(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)

    tp = TP("numbers", 0)
    async with running(app) as worker:
        await numbers.send(value=0)
        await wait_for(lambda: seen == [0])
        await wait_for(lambda: worker.committer is not None and worker.committer.committed.get(tp) == 1)
        # Nothing is fetched from it any more (a partition left paused).
        assert worker.consumer is not None
        worker.consumer.pause_nowait([tp])
        for value in range(1, 6):
            await numbers.send(value=value)
            await trio.sleep(10)
        assert worker.committer is not None
        assert worker.committer.statistics().behind == {tp: 1}
        warnings = [r.getMessage() for r in caplog.records if "has not moved" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("partition numbers[0]: the committed offset 1 has not moved for 3")
        assert "grew to 5 (lag 4)" in warnings[0]
        worker.consumer.resume_nowait([tp])
        await wait_for(lambda: len(seen) == 6, timeout=30)
        await trio.sleep(3)
        assert worker.committer.statistics().behind == {}
