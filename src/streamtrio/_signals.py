"""Faust's App signals (``app.on_rebalance_complete`` ...) and the component that fires them.

A signal is a list of receivers: ``@app.on_partitions_assigned.connect``
registers ``async def f(sender, assigned, **kwargs)`` (or a plain function).
:class:`Lifecycle` is a worker component: it hooks the worker's rebalance
listener and fires the signals after the tables have recovered.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ._types import TP

if TYPE_CHECKING:
    from ._app import App
    from ._worker import Worker

__all__ = ["Lifecycle", "Signal"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Signal:
    """Receivers called with ``(sender, *args, signal=self, **kwargs)``, in connection order.

    ``send`` awaits async receivers; an exception in a receiver propagates
    (a failing rebalance receiver stops the worker, like a failing agent).
    """

    def __init__(self, name: str, sender: Any = None) -> None:
        self.name = name
        self.sender = sender
        self.receivers: list[Callable[..., Any]] = []

    def connect(self, fun: F | None = None, **kwargs: Any) -> Any:
        """Add a receiver; usable as ``@signal.connect`` or ``@signal.connect()``."""
        if fun is None:
            return self.connect
        self.receivers.append(fun)
        return fun

    def disconnect(self, fun: Callable[..., Any]) -> None:
        if fun in self.receivers:
            self.receivers.remove(fun)

    async def send(self, *args: Any, **kwargs: Any) -> None:
        for receiver in list(self.receivers):
            result = receiver(self.sender, *args, signal=self, **kwargs)
            if inspect.isawaitable(result):
                await result

    def send_soon(self, *args: Any, **kwargs: Any) -> None:
        """Call the plain-function receivers now (for signals fired outside trio tasks)."""
        for receiver in list(self.receivers):
            result = receiver(self.sender, *args, signal=self, **kwargs)
            if inspect.isawaitable(result):
                result.close()  # type: ignore[attr-defined]
                raise TypeError(f"{self.name}: receiver {receiver!r} must be a plain function here")

    def __call__(self, fun: F) -> F:
        self.connect(fun)
        return fun

    def __repr__(self) -> str:
        return f"<Signal {self.name} receivers={len(self.receivers)}>"


class Lifecycle:
    """Worker component: rebalance signals, ``app.rebalancing`` and ``on_worker_init``.

    It is the last component attached, so its assign hook runs after the
    tables have recovered the new partitions.
    """

    name = "lifecycle"

    def __init__(self, app: App) -> None:
        self.app = app

    def attach(self, worker: Worker) -> None:
        worker.on_revoke_hooks.append(self._revoked)
        worker.on_assign_hooks.append(self._assigned)

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        app = self.app
        await app.on_worker_init.send()
        task_status.started()
        await trio.sleep_forever()

    async def _revoked(self, revoked: frozenset[TP]) -> None:
        app = self.app
        if not app.rebalancing:
            app.rebalancing = True
            await app.on_rebalance_start.send()
        await app.on_partitions_revoked.send(set(revoked))

    async def _assigned(self, assigned: frozenset[TP]) -> None:
        app = self.app
        await app.on_partitions_assigned.send(set(assigned))
        app.rebalancing = False
        await app.on_rebalance_complete.send()
