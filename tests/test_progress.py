"""The start-up progress display: what a worker waits for, drawn live in a terminal."""

from __future__ import annotations

import io
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from rich.console import Console

import streamtrio
from streamtrio import TP
from streamtrio._progress import ConsoleLogHandler, StartupProgress
from streamtrio._run import EXIT_ERROR, run_beside
from streamtrio._transports import kafka_admin
from streamtrio._worker import Worker

from .conftest import wait_for

AppFactory = Callable[..., streamtrio.App]


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=140, color_system=None), out


class HeldAssignment:
    """Holds the assign hooks (after the tables recovered), as a long recovery would."""

    name = "held"

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = trio.Event()

    def attach(self, worker: Worker) -> None:
        async def hold(assigned: frozenset[TP]) -> None:
            self.entered.set()
            await self.release.wait()

        worker.on_assign_hooks.append(hold)

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()


@asynccontextmanager
async def running(app: streamtrio.App, progress: StartupProgress) -> AsyncIterator[Worker]:
    """Run a worker with ``progress`` beside it, as ``streamtrio run`` does; stop both at the end."""
    async with trio.open_nursery() as nursery:
        worker = Worker(app)
        nursery.start_soon(progress.serve, worker)

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            try:
                await worker.serve(task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()

        await nursery.start(serve)
        try:
            yield worker
        finally:
            worker.stop()


def table_app(app_factory: AppFactory) -> streamtrio.App:
    app = app_factory("progress", web_enabled=False)
    orders = app.topic("orders", key_type=str, value_type=int, partitions=2)
    totals = app.Table("totals", key_type=str, default=int, partitions=2)

    @app.agent(orders)
    async def add(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            totals[event.key] += event.value

    return app


class Stuck:
    """A group member that stops polling once assigned: a joining worker waits for it."""

    def __init__(self) -> None:
        self.assigned = trio.Event()

    async def on_partitions_revoked(self, revoked: frozenset[TP]) -> dict[TP, int]:
        return {}

    async def on_partitions_assigned(self, assigned: frozenset[TP]) -> None:
        self.assigned.set()


async def test_live_row_while_the_group_keeps_the_worker_waiting(app_factory: AppFactory) -> None:
    app = table_app(app_factory)
    await app.declare_topics()
    console, out = terminal()
    progress = StartupProgress(app, live=True, console=console, interval=0.01)
    stuck = Stuck()
    letgo = trio.Event()
    transport = app._transport()

    async def hold_the_group(task_status: trio.TaskStatus[None]) -> None:
        async with transport.open_consumer(group_id=app.conf.appid, topics=["orders"], listener=stuck) as c:
            with trio.move_on_after(10):
                async with trio.open_nursery() as polling:
                    polling.start_soon(c.getmany)
                    await stuck.assigned.wait()
                    polling.cancel_scope.cancel()
            task_status.started()
            await letgo.wait()  # not polling: a rebalance waits for this member

    async with trio.open_nursery() as nursery:
        await nursery.start(hold_the_group)
        async with running(app, progress) as worker:
            await wait_for(lambda: "joining group 'progress'" in out.getvalue())
            assert worker.generation == 0
            letgo.set()  # the stuck member leaves: the worker is assigned
            await wait_for(lambda: worker.generation > 0 and not worker._recovering)
            drawn = len(out.getvalue())
            await trio.sleep(0.05)  # a few more frames: nothing waits, so nothing is drawn
            assert "joining" not in out.getvalue()[drawn:]
    rows = [line for line in re.split(r"[\r\n]", out.getvalue()) if "joining group 'progress'" in line]
    assert rows and all(re.search(r"joining group 'progress' .* \d+s\s*$", row) for row in rows), rows


async def test_live_rows_for_assignment_then_nothing(app_factory: AppFactory) -> None:
    app = table_app(app_factory)
    console, out = terminal()
    held = HeldAssignment()
    progress = StartupProgress(app, live=True, console=console, interval=0.01)
    app._components.append(held)
    async with running(app, progress) as worker:
        await held.entered.wait()
        await wait_for(lambda: "partition(s) not resumed yet" in out.getvalue())
        held.release.set()
        await wait_for(lambda: not worker._recovering)
        drawn = len(out.getvalue())
        await trio.sleep(0.05)  # a few more frames: nothing waits, so nothing is drawn
        assert "not resumed" not in out.getvalue()[drawn:]
    text = out.getvalue()
    assert "joining group" not in text  # the memory broker assigns at once: no wait to show
    assert "assigning partitions" in text


async def test_no_live_display_when_not_asked(app_factory: AppFactory) -> None:
    app = table_app(app_factory)
    console, out = terminal()
    progress = StartupProgress(app, live=False, console=console, interval=0.01)
    async with running(app, progress) as worker:
        await wait_for(lambda: bool(worker.source_partitions()))
    assert out.getvalue() == ""


def test_logs_print_through_the_display_console() -> None:
    console, out = terminal()
    handler = ConsoleLogHandler(console)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("streamtrio.test_progress")
    logger.addHandler(handler)
    try:
        logger.warning("partition %s is stalled [not markup]", "orders[1]")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue() == "WARNING partition orders[1] is stalled [not markup]\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def test_live_row_while_the_broker_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    # As `streamtrio run` does: the display starts before the worker declares its topics.
    monkeypatch.setattr(kafka_admin, "CONNECT_ATTEMPT", 0.5)
    port = _closed_port()
    app = streamtrio.App(
        "unreachable",
        broker=f"kafka://127.0.0.1:{port}",
        store="memory://",
        web_enabled=False,
        broker_request_timeout=1.6,
    )
    numbers = app.topic("numbers", value_type=int)

    @app.agent(numbers)
    async def work(stream: streamtrio.Stream[int]) -> None:
        async for _ in stream:
            pass

    console, out = terminal()
    progress = StartupProgress(app, live=True, console=console, interval=0.01)
    assert run_beside(app, progress.serve) == EXIT_ERROR
    rows = [line for line in re.split(r"[\r\n]", out.getvalue()) if "connecting to" in line]
    assert rows, out.getvalue()
    where = f"connecting to kafka://127.0.0.1:{port} "
    assert all(where in row and re.search(r"attempt \d+, \d+s\s*$", row) for row in rows), rows
    attempts = {int(m.group(1)) for row in rows if (m := re.search(r"attempt (\d+),", row))}
    assert {1, 2} <= attempts, rows
