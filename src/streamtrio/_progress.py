"""Start-up progress a person can read: joining the group, recovering tables.

:class:`StartupProgress` is a worker component added by ``streamtrio run``.
In a terminal it keeps a live display (rich, redrawn by its own trio task:
no refresh thread) of what the worker waits for::

    ⠋ joining group 'orders-app'                    4s
    ⠙ recovering tables ━━━━━━━╸━━━━━━━  412000/1000000 records (41%), 180000 records/s, ETA 3.3s

When standard error is not a terminal, or under ``--no-progress``, it logs a
plain line instead every ``PLAIN_EVERY`` seconds while the worker waits to
join (the recovery logs its own periodic lines, see :mod:`._tables.recovery`).
Rows disappear when their wait is over; nothing is drawn while nothing waits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ._app import App
    from ._worker import Worker

__all__ = ["ConsoleLogHandler", "StartupProgress", "Wait", "waits"]

log = logging.getLogger(__name__)

#: Seconds between plain log lines when there is no live display.
PLAIN_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class Wait:
    """One thing the worker waits for, as a row of the display.

    Attributes:
        key: which wait (``"join"`` or ``"recovery"``).
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


def waits(app: App, worker: Worker, since: float) -> list[Wait]:
    """What ``worker`` waits for now (``since``: trio time the worker started)."""
    found: list[Wait] = []
    now = trio.current_time()
    if app._needs_group() and worker.generation == 0 and not worker.stopping:
        found.append(Wait("join", f"joining group {app.id!r}", f"{now - since:.0f}s"))
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


class StartupProgress:
    """Worker component showing :func:`waits` (live in a terminal, plain log lines otherwise).

    Args:
        app: the app.
        live: draw a live display (``None``: when the console is a terminal).
        console: where to draw (default: standard error).
        interval: seconds between redraws.
    """

    name = "progress"

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

    def attach(self, worker: Worker) -> None:
        pass

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        since = trio.current_time()
        task_status.started()
        if self.live:
            await self._serve_live(worker, since)
        else:
            await self._serve_plain(worker, since)

    async def _serve_plain(self, worker: Worker, since: float) -> None:
        while True:
            await trio.sleep(PLAIN_EVERY)
            for wait in waits(self.app, worker, since):
                if wait.key == "join":  # the recovery logs its own progress lines
                    log.info("%s: no partitions yet after %s", wait.description, wait.detail)

    async def _serve_live(self, worker: Worker, since: float) -> None:
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
        progress.start()
        try:
            while True:
                _show(progress, rows, waits(self.app, worker, since))
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
