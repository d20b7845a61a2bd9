"""Start-up talks: a worker that cannot reach its broker says so while it waits.

No broker is needed: the worker is pointed at a closed port. (Waiting for an
assignment is in tests/kafka/test_startup_kafka.py.)
"""

from __future__ import annotations

import logging
import socket

import pytest
import trio

import streamtrio
from streamtrio._exceptions import BrokerUnavailableError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def _unreachable_app(name: str, port: int, **settings: float) -> streamtrio.App:
    """An app with one agent whose broker is the closed ``port``."""
    app = streamtrio.App(
        name, broker=f"kafka://127.0.0.1:{port}", store="memory://", web_enabled=False, **settings
    )
    numbers = app.topic("numbers", value_type=int)

    @app.agent(numbers)
    async def work(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            pass

    return app


async def test_an_unreachable_broker_is_reported_every_five_seconds_until_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrio")
    port = _closed_port()
    app = _unreachable_app("unreachable", port, broker_request_timeout=11.0)
    with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port} within 11s"):
        await streamtrio.serve(app)
    lines = [r.getMessage() for r in caplog.records]
    assert f"connecting to kafka://127.0.0.1:{port}" in lines
    attempts = [line for line in lines if line.startswith(f"connecting to kafka://127.0.0.1:{port} (attempt")]
    # Under load a last, short attempt may still fit before the timeout: check the first two.
    assert [a.split(",")[0] for a in attempts[:2]] == [
        f"connecting to kafka://127.0.0.1:{port} (attempt 1",
        f"connecting to kafka://127.0.0.1:{port} (attempt 2",
    ], lines
    assert "5s of broker_request_timeout=11s" in attempts[0]
    assert "10s of broker_request_timeout=11s" in attempts[1]


async def test_a_stop_while_connecting_ends_the_start_within_the_shutdown_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failed before: the stop waited for the whole connection attempt, up to
    broker_request_timeout (30 s here, 27 s seen with `streamtrio run`), far past
    shutdown_timeout. A stop before the worker has started abandons the start."""
    caplog.set_level(logging.INFO, logger="streamtrio")
    app = _unreachable_app(
        "stopped-while-connecting", _closed_port(), broker_request_timeout=30.0, shutdown_timeout=2.0
    )
    worker = streamtrio.Worker(app)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.serve)
        with trio.fail_after(10):
            while not any(r.getMessage().startswith("connecting to") for r in caplog.records):
                await trio.sleep(0.01)
        worker.stop()
        # the deadline is shutdown_timeout plus the close margin of a worker
        with trio.fail_after(2.0 + 2.0):
            while app._worker is not None:
                await trio.sleep(0.01)
    assert worker.error is None and not worker.unfinished and not worker.ready
    assert "stopped while starting: nothing was processed" in caplog.text
