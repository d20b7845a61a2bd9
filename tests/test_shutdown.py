"""One deadline per stop (ARCHITECTURE rule 10), on the memory transport.

The Kafka side (broker frozen, broker gone) is in tests/kafka/test_shutdown_deadline_kafka.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import trio
import trio.testing

import streamtrio

from .conftest import running, wait_for
from .test_worker import AppFactory

ROOT = Path(__file__).resolve().parents[1]
#: The promise: from the stop request to exit within shutdown_timeout + this.
MARGIN = 2.0


async def test_an_agent_that_never_returns_is_cut_off_at_the_deadline_and_named(
    streamtrio_app_factory: AppFactory, autojump_clock: trio.testing.MockClock
) -> None:
    app = streamtrio_app_factory(shutdown_timeout=5.0, commit_interval=0.5)
    numbers = app.topic("numbers", value_type=int, partitions=2)
    seen: list[int] = []

    @app.agent(numbers)
    async def stuck(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)
            if value == 3:
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        for value in range(3):
            await numbers.send(key=b"a", value=value, partition=0)
        await wait_for(lambda: seen == [0, 1, 2])
        await numbers.send(key=b"b", value=3, partition=1)
        await wait_for(lambda: seen == [0, 1, 2, 3])
        stopped_at = trio.current_time()
        worker.stop()
    took = trio.current_time() - stopped_at
    assert took <= 5.0 + MARGIN, took
    # What was done is committed; the event that never finished is named.
    committed = streamtrio_app_factory.broker.committed(app.conf.appid)
    assert committed[streamtrio.TP("numbers", 0)] == 3
    assert committed.get(streamtrio.TP("numbers", 1), 0) == 0
    assert worker.unfinished == ["not committed: events in flight at numbers[1]@0"]


async def test_a_clean_stop_leaves_nothing_unfinished(streamtrio_app_factory: AppFactory) -> None:
    app = streamtrio_app_factory()
    numbers = app.topic("numbers", value_type=int, partitions=1)
    seen: list[int] = []

    @app.agent(numbers)
    async def fine(stream: streamtrio.Stream[int]) -> None:
        async for value in stream:
            seen.append(value)

    async with running(app) as worker:
        await numbers.send(value=1)
        await wait_for(lambda: seen == [1])
    assert worker.unfinished == []


def test_cli_exits_1_within_the_deadline_naming_the_event_in_flight() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtrio", "run", "tests/apps/hanging.py"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "stuck on the first event" in proc.stdout.readline()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert took <= 2.0 + MARGIN, took
    assert "not committed" in err and "numbers[0]@0" in err, err
