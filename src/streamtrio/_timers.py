"""Timers, one-shot tasks and long-running services started with the worker.

Each runs as a child of the worker's work nursery. An exception in any of
them stops the worker (loudly), exactly like an agent crash.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

import trio

from ._exceptions import WorkerError

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = [
    "Crontab",
    "Service",
    "Task",
    "Timer",
    "asyncio_hint",
    "crontab_task",
    "serve_service",
    "serve_task",
    "serve_timer",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timer:
    """``@app.timer(interval)``: ``fun`` runs every ``interval`` seconds."""

    fun: Callable[..., Awaitable[Any]]
    interval: float
    on_leader: bool = False

    @property
    def name(self) -> str:
        return getattr(self.fun, "__name__", repr(self.fun))


@dataclass(frozen=True, slots=True)
class Task:
    """``@app.task``: ``fun`` runs once when the worker is ready."""

    fun: Callable[..., Awaitable[Any]]

    @property
    def name(self) -> str:
        return getattr(self.fun, "__name__", repr(self.fun))


@dataclass(frozen=True, slots=True)
class Service:
    """``@app.service``: an async function, or an object with ``async serve(task_status=)``."""

    target: Any

    @property
    def name(self) -> str:
        return getattr(self.target, "__name__", type(self.target).__name__)


def asyncio_hint(exc: BaseException) -> str:
    """A porting hint for errors asyncio code raises when it runs under trio."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("event loop" in text or "no running" in text):
        return (
            " (streamtrio runs app code on trio, not asyncio: use `await trio.sleep(n)` or "
            "`await app.sleep(n)` for asyncio.sleep, trio.Event/trio.Lock/trio memory channels "
            "for asyncio.Event/Lock/Queue, and a nursery or @app.task for asyncio.create_task; "
            "see docs/porting-from-faust.md)"
        )
    return ""


def _call(fun: Callable[..., Any], worker: Worker) -> Any:
    """Call with the app as argument if the function takes one."""
    try:
        params = inspect.signature(fun).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if params:
        return fun(worker.app)
    return fun()


async def serve_timer(worker: Worker, timer: Timer) -> None:
    """Run ``timer`` at a fixed rate: the k-th run is due ``k * interval`` after start.

    A run that overruns makes the missed ticks collapse into one, rather than
    firing a burst.
    """
    interval = timer.interval
    due = trio.current_time() + interval
    while True:
        await trio.sleep_until(due)
        if not timer.on_leader or worker.app.is_leader():
            try:
                await _call(timer.fun, worker)
            except Exception as exc:
                error = WorkerError(
                    f"timer {timer.name} raised {type(exc).__name__}: {exc}{asyncio_hint(exc)}"
                )
                error.__cause__ = exc
                worker.crash(error)
                return
        due += interval
        now = trio.current_time()
        if due < now:
            due = now + interval - ((now - due) % interval)


async def serve_task(worker: Worker, task: Task) -> None:
    try:
        await _call(task.fun, worker)
    except Exception as exc:
        error = WorkerError(f"task {task.name} raised {type(exc).__name__}: {exc}{asyncio_hint(exc)}")
        error.__cause__ = exc
        worker.crash(error)


async def serve_service(
    worker: Worker,
    service: Service,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    target = service.target
    try:
        if inspect.isclass(target):
            target = _call(target, worker)
        serve = getattr(target, "serve", None)
        if serve is not None and inspect.iscoroutinefunction(serve):
            await serve(task_status=task_status)
        else:
            task_status.started()
            await _call(target, worker)
    except Exception as exc:
        error = WorkerError(f"service {service.name} raised {type(exc).__name__}: {exc}{asyncio_hint(exc)}")
        error.__cause__ = exc
        worker.crash(error)


# -- crontab ------------------------------------------------------------------------

_CRON_NAMES = {
    **{
        m: i + 1
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        )
    },
    **{d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def _cron_field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body in ("*", ""):
            start, stop = low, high
        elif "-" in body:
            a, b = body.split("-", 1)
            start, stop = int(_CRON_NAMES.get(a, a)), int(_CRON_NAMES.get(b, b))
        else:
            start = int(_CRON_NAMES.get(body, body))
            stop = high if step_text else start
        if step < 1 or not (low <= start <= stop <= high or (high == 6 and stop == 7)):
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(7 if v == 7 and high == 6 else v for v in range(start, stop + 1, step))
    if high == 6 and 7 in values:  # the weekday field: Sunday is 0 or 7
        values.discard(7)
        values.add(0)
    return frozenset(values)


class Crontab:
    """A five-field cron expression (minute hour day-of-month month day-of-week).

    Fields take ``*``, numbers, ranges ``a-b``, lists ``a,b`` and steps
    ``*/n``, ``a-b/n``; months and weekdays also take names (``jan``, ``mon``).
    As in cron, when both day fields are restricted a day matching either runs.

    Raises:
        ConfigurationError: the expression is not valid.
    """

    def __init__(self, expression: str) -> None:
        from ._exceptions import ConfigurationError

        parts = expression.split()
        if len(parts) != 5:
            raise ConfigurationError(f"crontab {expression!r}: expected 5 fields, got {len(parts)}")
        try:
            fields = [_cron_field(p, lo, hi) for p, (lo, hi) in zip(parts, _CRON_RANGES, strict=True)]
        except ValueError as exc:
            raise ConfigurationError(f"crontab {expression!r}: {exc}") from None
        self.expression = expression
        self.minutes, self.hours, self.days, self.months, self.weekdays = fields
        self._any_day = parts[2] == "*"
        self._any_weekday = parts[4] == "*"

    def _day_matches(self, when: datetime) -> bool:
        dom = when.day in self.days
        dow = (when.weekday() + 1) % 7 in self.weekdays
        if self._any_day or self._any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, when: datetime) -> datetime:
        """The first matching minute strictly after ``when`` (in ``when``'s timezone)."""
        t = when.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(366 * 24 * 60 * 5):  # five years of minutes at most
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t += timedelta(minutes=1)
                continue
            return t
        raise ValueError(f"crontab {self.expression!r} never matches")


def crontab_task(
    fun: Callable[..., Awaitable[Any]],
    cron: Crontab,
    *,
    timezone: tzinfo | None,
    on_leader: bool,
    app: Any,
) -> Callable[[], Awaitable[None]]:
    """The loop behind ``@app.crontab``: a task that calls ``fun`` at each matching minute.

    The wall clock is ``time.time()`` at start plus trio's clock since, so
    trio's ``MockClock`` drives it in tests.
    """
    import time

    async def run_crontab() -> None:
        tz = timezone or UTC
        start_wall, start_trio = time.time(), trio.current_time()

        def now() -> datetime:
            return datetime.fromtimestamp(start_wall + trio.current_time() - start_trio, tz)

        last = now()
        while True:
            due = cron.next_after(last)
            await trio.sleep(max(0.0, (due - now()).total_seconds()))
            last = due
            if not on_leader or app.is_leader():
                params = inspect.signature(fun).parameters
                await (fun(app) if params else fun())

    run_crontab.__name__ = getattr(fun, "__name__", "crontab")
    return run_crontab
