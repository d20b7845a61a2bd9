"""Entry points: :func:`serve` inside a trio run, :func:`run` from synchronous code."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import trio

from ._exceptions import StreamtrioError
from ._worker import Worker

if TYPE_CHECKING:
    from ._app import App

__all__ = ["EXIT_ERROR", "EXIT_OK", "run", "serve"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
#: A second SIGINT/SIGTERM exits at once with this code.
EXIT_FORCED = 130


async def serve(app: App, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a worker for ``app`` inside the caller's trio run.

    With ``worker = await nursery.start(streamtrio.serve, app)`` the call
    returns once agents run; ``worker.stop()`` then shuts it down gracefully
    (drain, commit, close). Cancelling the caller's scope stops it at once,
    without a final commit.

    Raises:
        StreamtrioError: the worker could not start or stopped on an error.
    """
    await Worker(app).serve(task_status=task_status)


async def _watch_signals(
    worker: Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        received = 0
        async for signum in signals:
            received += 1
            name = signal.Signals(signum).name
            if received == 1:
                log.warning("%s received: shutting down gracefully (send it again to exit at once)", name)
                worker.stop()
            else:
                log.error("%s received again: exiting at once, without committing", name)
                sys.stderr.flush()
                os._exit(EXIT_FORCED)


async def _main(app: App) -> int:
    worker = Worker(app)
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, worker)
        try:
            await worker.serve()
        except StreamtrioError as exc:
            if worker.error is None:
                # It never started: a configuration, topic or broker problem.
                log.error("worker could not start: %s", exc)
            return EXIT_ERROR
        finally:
            nursery.cancel_scope.cancel()
    return EXIT_OK


def run(app: App) -> int:
    """Run a worker for ``app`` until SIGINT/SIGTERM or an error; return the exit code.

    The first signal shuts down gracefully within ``shutdown_timeout``; a
    second one exits at once. Returns 0 after a graceful stop and 1 when the
    worker stopped because of an error (which is logged with its traceback).
    """
    return trio.run(_main, app)
