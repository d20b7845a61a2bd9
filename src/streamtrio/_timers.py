"""Timers, one-shot tasks and long-running services started with the worker.

Each runs as a child of the worker's work nursery. An exception in any of
them stops the worker (loudly), exactly like an agent crash.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ._exceptions import WorkerError

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Service", "Task", "Timer", "serve_service", "serve_task", "serve_timer"]

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
                error = WorkerError(f"timer {timer.name} raised {type(exc).__name__}: {exc}")
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
        error = WorkerError(f"task {task.name} raised {type(exc).__name__}: {exc}")
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
        error = WorkerError(f"service {service.name} raised {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        worker.crash(error)
