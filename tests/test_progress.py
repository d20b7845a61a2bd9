"""The start-up progress display: what a worker waits for, drawn live in a terminal."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import trio
from rich.console import Console

import streamtrio
from streamtrio import TP
from streamtrio._progress import ConsoleLogHandler, StartupProgress
from streamtrio._worker import Worker

from .conftest import running, wait_for

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


def table_app(app_factory: AppFactory) -> streamtrio.App:
    app = app_factory("progress", web_enabled=False)
    orders = app.topic("orders", key_type=str, value_type=int, partitions=2)
    totals = app.Table("totals", key_type=str, default=int, partitions=2)

    @app.agent(orders)
    async def add(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            totals[event.key] += event.value

    return app


async def test_live_rows_for_joining_and_assignment_then_nothing(app_factory: AppFactory) -> None:
    app = table_app(app_factory)
    console, out = terminal()
    held = HeldAssignment()
    app._components.append(StartupProgress(app, live=True, console=console, interval=0.01))
    app._components.append(held)
    async with running(app) as worker:
        await held.entered.wait()
        await wait_for(lambda: "partition(s) not resumed yet" in out.getvalue())
        held.release.set()
        await wait_for(lambda: not worker._recovering)
        drawn = len(out.getvalue())
        await trio.sleep(0.05)  # a few more frames: nothing waits, so nothing is drawn
        assert "not resumed" not in out.getvalue()[drawn:]
    text = out.getvalue()
    assert "joining group 'progress'" in text
    assert "assigning partitions" in text


async def test_no_live_display_when_not_asked(app_factory: AppFactory) -> None:
    app = table_app(app_factory)
    console, out = terminal()
    app._components.append(StartupProgress(app, live=False, console=console, interval=0.01))
    async with running(app) as worker:
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
