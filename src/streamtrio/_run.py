"""Entry points: :func:`serve` inside a trio run, :func:`run` from synchronous code."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn

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


class _Signals:
    """SIGINT/SIGTERM for :func:`run`: the first stops the worker gracefully, a second
    exits at once.

    Plain Python handlers, not trio's signal receiver: a handler runs in the main
    thread even while user code blocks the trio loop (``time.sleep`` in an
    agent), so the second signal exits at once whatever the loop is doing. The
    first only asks the loop to stop the worker (``run_sync_soon`` wakes it).
    """

    def __init__(self) -> None:
        self.received = 0
        self.worker: Worker | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back, unless a stop was asked for by a signal.

        After a signal the process is ending; what follows ``run()`` (atexit
        hooks, librdkafka's threads and destructors) can take seconds, and a
        second signal then must still exit at once with 130, not raise
        KeyboardInterrupt there or kill the process by the signal.
        """
        if self.received:
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1 and self.token is not None and self.worker is not None:
            self.token.run_sync_soon(self._first, name)
            return
        # Not through logging: its locks may be held by the interrupted code.
        os.write(2, f"{name} received again: exiting at once, without committing\n".encode())
        os._exit(EXIT_FORCED)

    def _first(self, name: str) -> None:
        log.warning("%s received: shutting down gracefully (send it again to exit at once)", name)
        assert self.worker is not None
        self.worker.stop()


#: A task run beside the worker from before it starts (the CLI's progress display).
Beside = Callable[[Worker], Awaitable[None]]


async def _main(app: App, signals: _Signals, beside: Beside | None) -> int:
    worker = Worker(app)
    signals.worker = worker
    signals.token = trio.lowlevel.current_trio_token()
    async with trio.open_nursery() as nursery:
        if beside is not None:
            nursery.start_soon(beside, worker)
        failed: Exception | None = None
        try:
            await worker.serve()
        except Exception as exc:  # handled below, outside the nursery: not wrapped in a group
            failed = exc
        finally:
            nursery.cancel_scope.cancel()
    if isinstance(failed, StreamtrioError):
        if worker.error is None:
            # It never started: a configuration, topic or broker problem.
            log.error("worker could not start: %s", failed)
        return EXIT_ERROR
    if failed is not None:
        raise failed
    if worker.unfinished:
        log.error("stopped with work left undone: %s", "; ".join(worker.unfinished))
        return EXIT_ERROR
    return EXIT_OK


def run(app: App) -> int:
    """Run a worker for ``app`` until SIGINT/SIGTERM or an error; return the exit code.

    The first signal shuts down gracefully within ``shutdown_timeout`` (plus
    about a second to leave the group and close); a second one exits at once.
    Returns 0 after a complete graceful stop, and 1 when the worker stopped
    because of an error (logged with its traceback) or its stop left work
    undone (offsets not committed, messages not delivered; logged by name).
    """
    return run_beside(app, None)


def run_beside(app: App, beside: Beside | None, *, end_process: bool = False) -> int:
    """:func:`run`, with ``beside(worker)`` running from before the worker starts
    until it has stopped (then it is cancelled).

    With ``end_process`` (``streamtrio run``), a stop asked for by a signal ends
    the process right after, with the exit code: see :func:`_end_process`.
    """
    signals = _Signals()
    if threading.current_thread() is threading.main_thread():
        signals.install()
    try:
        code = trio.run(_main, app, signals, beside)
    finally:
        signals.restore()
    if end_process and signals.received:
        _end_process(code)
    return code


def _end_process(code: int) -> NoReturn:
    """End the process now, after a stop asked for by a signal, keeping the handlers.

    Interpreter finalization would reset SIGINT to its default action while
    it destroys what is left (confluent-kafka's clients, for seconds): a
    second signal then killed the process by the signal instead of exiting
    130. The atexit hooks still run, then logs and output are flushed.
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _exit_unless_signalled(code)


def _exit_unless_signalled(code: int) -> NoReturn:
    """``os._exit(code)``, or 130 for a signal that came too late for its handler.

    A signal delivered after the last Python instruction that runs handlers
    would be lost to ``os._exit``, and the process would exit 0 though asked to
    exit at once. Blocked from here on, a late one stays pending and is seen;
    one delivered before the block has its handler run by the next call.
    """
    ending = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, ending)
        _run_handlers()
        late = sorted(signal.sigpending() & ending)
        if late:
            name = signal.Signals(late[0]).name
            os.write(2, f"{name} received again: exiting at once, without committing\n".encode())
            os._exit(EXIT_FORCED)
    os._exit(code)


def _run_handlers() -> None:
    """Nothing: entering a Python function runs the handlers of signals already delivered."""
