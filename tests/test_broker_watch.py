"""A running worker that cannot reach the broker says so, at once and every 10 s, and /stats shows it."""

from __future__ import annotations

import logging
import re

import pytest
import trio
import trio.testing

import streamtrio
from streamtrio._transports.memory import MemoryTransport
from streamtrio.testing import AppFactory

from .conftest import running


async def test_an_unreachable_broker_is_reported_every_ten_seconds_naming_what_waits(
    app_factory: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = app_factory()
    topic = app.topic("idle", value_type=int, partitions=2)

    @app.agent(topic)
    async def consume(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            pass

    answer: list[str | None] = [None]

    async def probe(self: MemoryTransport, within: float) -> str | None:
        await trio.lowlevel.checkpoint()
        return answer[0]

    monkeypatch.setattr(MemoryTransport, "probe", probe)
    caplog.set_level(logging.WARNING, logger="streamtrio._broker_watch")
    async with running(app) as worker:
        await trio.sleep(12.0)
        assert app.monitor.stats()["broker"] == {
            "reachable": True,
            "unreachable_for_seconds": None,
            "last_error": None,
        }
        answer[0] = "Local: Broker transport failure"  # the network is cut
        await trio.sleep(31.0)
        stats = app.monitor.stats()["broker"]
        assert stats["reachable"] is False and stats["last_error"] == "Local: Broker transport failure"
        assert stats["unreachable_for_seconds"] >= 25.0
        answer[0] = None
        await trio.sleep(6.0)
        assert app.monitor.stats()["broker"]["reachable"] is True
        assert worker.source_partitions()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot reach the broker")]
    seconds = [int(re.search(r"for (\d+)s", line)[1]) for line in lines]  # type: ignore[index]
    assert len(lines) == 3 and seconds[0] <= 5 and seconds[1] - seconds[0] >= 10, lines
    assert re.match(
        r"cannot reach the broker at memory://\S+ for 0s \(Local: Broker transport failure\)", lines[0]
    )
    assert "waiting for the events of 2 assigned partition(s)" in lines[0]
    assert any(
        re.match(r"the broker at memory://\S+ answers again, after 30s", r.getMessage())
        for r in caplog.records
    )
