"""Start-up progress a person can read: the broker, the group, the tables.

:class:`StartupProgress` runs beside the worker under ``streamtrio run``,
from before the worker declares its topics. In a terminal it keeps a live
display (rich, redrawn by its own trio task: no refresh thread) of what the
worker waits for::

    ⠋ connecting to kafka://10.0.0.5:9092            attempt 2, 7s
    ⠋ joining group 'orders-app'                     4s
    ⠙ recovering tables ━━━━━━━╸━━━━━━━  412000/1000000 records (41%), 180000 records/s, ETA 3.3s

Rows disappear when their wait is over; nothing is drawn while nothing
waits. When standard error is not a terminal, or under ``--no-progress``,
nothing is drawn: each wait logs its own lines (the admin client each failed
connection attempt, the worker each 5 s without an assignment, the recovery
its progress).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ._app import App
    from ._worker import Worker

__all__ = ["ConsoleLogHandler", "StartupProgress", "Wait", "waits"]


@dataclass(frozen=True, slots=True)
class Wait:
    """One thing the worker waits for, as a row of the display.

    Attributes:
        key: which wait (``"connect"``, ``"join"`` or ``"recovery"``).
        description: what it is.
        detail: done/total, rate and ETA where known; otherwise the time waited.
        done: work done (records), for the bar.
        total: work to do, ``None`` when unknown (the bar pulses).
    """

    key: str
    description: str
    detail: str
    done: int = 0
    total: int | None = None


def waits(app: App, worker: Worker, joining_since: float | None) -> list[Wait]:
    """What ``worker`` waits for now.

    Args:
        app: the worker's app.
        worker: the worker.
        joining_since: trio time its consumer was first seen waiting for an
            assignment (``None``: it is not waiting for one).
    """
    found: list[Wait] = []
    broker = worker.transport.connecting
    if broker is not None:
        waited = time.monotonic() - broker.since
        found.append(
            Wait("connect", f"connecting to {broker.url}", f"attempt {broker.attempt}, {waited:.0f}s")
        )
    if joining_since is not None:
        waited = trio.current_time() - joining_since
        found.append(Wait("join", f"joining group {app.conf.appid!r}", f"{waited:.0f}s"))
    recovering = len(worker._recovering)
    if recovering:
        manager = getattr(app, "_table_manager", None)
        progress = manager.statistics().recovery if manager and manager.running else None
        if progress is not None and not progress.finished:
            found.append(
                Wait(
                    "recovery",
                    "recovering tables",
                    progress.describe(),
                    done=progress.done,
                    total=progress.total,
                )
            )
        else:
            detail = f"{recovering} partition(s) not resumed yet"
            found.append(Wait("recovery", "assigning partitions", detail))
    return found


def _joining(app: App, worker: Worker) -> bool:
    """The worker's consumer is in the group and has no assignment yet."""
    return (
        app._needs_group() and worker.consumer is not None and worker.generation == 0 and not worker.stopping
    )


class StartupProgress:
    """Draws :func:`waits` live in a terminal while a worker starts and runs.

    Args:
        app: the app.
        live: draw a live display (``None``: when the console is a terminal);
            without it :meth:`serve` draws nothing (the waits log their own lines).
        console: where to draw (default: standard error).
        interval: seconds between redraws.
    """

    def __init__(
        self,
        app: App,
        *,
        live: bool | None = None,
        console: Console | None = None,
        interval: float = 0.1,
    ) -> None:
        self.app = app
        self._live = live
        self._console = console
        self.interval = interval

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    @property
    def live(self) -> bool:
        return self._live if self._live is not None else self.console.is_terminal

    async def serve(self, worker: Worker) -> None:
        """Draw until cancelled (started beside ``worker.serve()``, before it)."""
        if not self.live:
            return
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            transient=True,
            auto_refresh=False,  # redrawn below, from this task: no refresh thread
            redirect_stdout=False,
            redirect_stderr=False,
        )
        rows: dict[str, TaskID] = {}
        joining_since: float | None = None
        progress.start()
        try:
            while True:
                if not _joining(self.app, worker):
                    joining_since = None
                elif joining_since is None:
                    joining_since = trio.current_time()
                _show(progress, rows, waits(self.app, worker, joining_since))
                progress.refresh()
                await trio.sleep(self.interval)
        finally:
            progress.stop()


def _show(progress: Progress, rows: dict[str, TaskID], current: list[Wait]) -> None:
    keys = {wait.key for wait in current}
    for key in [k for k in rows if k not in keys]:
        progress.remove_task(rows.pop(key))
    for wait in current:
        fields: dict[str, Any] = {"detail": wait.detail}
        row = rows.get(wait.key)
        if row is None:
            rows[wait.key] = progress.add_task(
                wait.description, total=wait.total, completed=wait.done, **fields
            )
        else:
            progress.update(
                row, description=wait.description, total=wait.total, completed=wait.done, **fields
            )


class ConsoleLogHandler(logging.Handler):
    """Writes log records through the display's console, so they print above the live rows."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            self.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
        except Exception:
            self.handleError(record)
