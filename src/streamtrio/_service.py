"""``streamtrio.Service``: Faust's (mode's) service class, run as a trio task tree.

::

    @app.service
    class Poller(streamtrio.Service):
        async def on_start(self) -> None: ...
        async def on_stop(self) -> None: ...

        @streamtrio.Service.task
        async def _poll(self) -> None: ...

        @streamtrio.Service.timer(5.0)
        async def _report(self) -> None: ...

The worker starts it with the app's other services: ``on_start``, then every
``@Service.task`` and ``@Service.timer`` in a nursery of its own, then
``on_started``. When the worker stops, the tasks are cancelled and
``on_stop`` and ``on_shutdown`` run (bounded by ``shutdown_timeout``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import trio

from ._settings import parse_duration

if TYPE_CHECKING:
    from ._app import App

__all__ = ["Service"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Callable[..., Awaitable[Any]])

_TASK = "_streamtrio_service_task"
_TIMER = "_streamtrio_service_timer"


class Service:
    """Base class of long-running services with start/stop hooks (Faust's ``faust.Service``).

    Args:
        app: the app, when the service is started by ``@app.service`` (optional).
    """

    _st_tasks: ClassVar[tuple[str, ...]] = ()
    _st_timers: ClassVar[tuple[tuple[str, float], ...]] = ()

    def __init__(self, app: App | None = None, **kwargs: Any) -> None:
        self.app = app
        self._stopping = False
        self._started = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tasks: list[str] = []
        timers: list[tuple[str, float]] = []
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if getattr(value, _TASK, False) and name not in tasks:
                    tasks.append(name)
                interval = getattr(value, _TIMER, None)
                if interval is not None and all(n != name for n, _ in timers):
                    timers.append((name, interval))
        cls._st_tasks = tuple(tasks)
        cls._st_timers = tuple(timers)

    # -- decorators -------------------------------------------------------------

    @staticmethod
    def task(fun: M) -> M:
        """Run the decorated ``async def method(self)`` in the background while the service runs."""
        setattr(fun, _TASK, True)
        return fun

    @staticmethod
    def timer(interval: float | timedelta | str) -> Callable[[M], M]:
        """Run the decorated ``async def method(self)`` every ``interval`` seconds."""
        seconds = parse_duration(interval, name="Service.timer interval")

        def decorator(fun: M) -> M:
            setattr(fun, _TIMER, seconds)
            return fun

        return decorator

    # -- hooks (override) ---------------------------------------------------------

    async def on_first_start(self) -> None:
        """Called before ``on_start`` the first time the service starts."""

    async def on_start(self) -> None:
        """Called when the service starts, before its tasks."""

    async def on_started(self) -> None:
        """Called once the tasks are running."""

    async def on_stop(self) -> None:
        """Called when the service stops, after its tasks were cancelled."""

    async def on_shutdown(self) -> None:
        """Called last."""

    # -- state --------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """True once the service is stopping (loops should end)."""
        return self._stopping

    async def sleep(self, seconds: float | timedelta) -> None:
        """Sleep (``trio.sleep``); Faust code calls ``await self.sleep(n)`` in loops."""
        await trio.sleep(parse_duration(seconds, name="sleep"))

    # -- running --------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the service until cancelled (the worker calls this)."""
        grace = self.app.conf.shutdown_timeout if self.app is not None else 30.0
        try:
            if not self._started:
                self._started = True
                await self.on_first_start()
            await self.on_start()
            async with trio.open_nursery() as nursery:
                for name in self._st_tasks:
                    nursery.start_soon(getattr(self, name))
                for name, interval in self._st_timers:
                    nursery.start_soon(self._run_timer, getattr(self, name), interval)
                await self.on_started()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._stopping = True
            with trio.move_on_after(grace, shield=True):
                await self.on_stop()
                await self.on_shutdown()

    async def _run_timer(self, fun: Callable[[], Awaitable[Any]], interval: float) -> None:
        due = trio.current_time() + interval
        while True:
            await trio.sleep_until(due)
            await fun()
            due = max(due + interval, trio.current_time())

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
