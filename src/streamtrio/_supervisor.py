"""``streamtrio run --workers N``: N worker processes of one app under one supervisor.

The supervisor is a small trio program: it imports the app to read its
settings and runs none of it. It starts each worker as a child process (the
same command line, so the same app and options) with
``STREAMTRIO_WORKER_INDEX`` and ``STREAMTRIO_WORKER_COUNT`` in its
environment; the child sees them and runs as worker ``i`` of ``N`` with its
own data dir (``<datadir>/worker-<i>``) and web port (``web_port + i``):
see :func:`child_overrides`. Children run in their own session, so a Ctrl-C
in the terminal reaches only the supervisor, which:

- on the first SIGINT/SIGTERM sends SIGTERM to each child once (a graceful
  stop: drain, commit, leave the group) and waits at most ``stop_timeout``
  (the app's ``shutdown_timeout`` plus :data:`STOP_MARGIN`), then kills what
  is left (SIGKILL, by name) and exits 1; otherwise it exits 0 only if every
  child exited 0;
- on a second one sends SIGINT to the children (they exit at once, 130) and
  exits 130.

A child whose supervisor is gone (killed with SIGKILL) stops itself
gracefully within a second: :func:`stop_with_parent`.

A child that exits while the supervisor is not stopping is restarted with
backoff (``on_exit="restart"``: 1 s doubling to 30 s, back to 1 s after it
ran a minute), or ends the others gracefully and the supervisor exits 1
(``on_exit="stop"``). A child exiting with 2 (the app could not be loaded, a
setting is wrong) is never restarted: a restart could not help.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import trio

from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._settings import Settings

__all__ = [
    "COUNT_ENV",
    "INDEX_ENV",
    "OnExit",
    "Slot",
    "Supervisor",
    "check_can_span",
    "child_command",
    "child_overrides",
    "parse_workers",
    "slots_for",
    "stop_with_parent",
    "supervise",
    "supervised",
    "worker_info",
]

log = logging.getLogger(__name__)

#: The environment variables that make a process worker ``INDEX`` of ``COUNT``.
INDEX_ENV = "STREAMTRIO_WORKER_INDEX"
COUNT_ENV = "STREAMTRIO_WORKER_COUNT"

#: Seconds granted beyond the app's ``shutdown_timeout`` before the children are killed:
#: a worker needs about 1.5 s past it to leave the group and close, and Python its exit.
STOP_MARGIN = 5.0
#: Seconds the children get to exit after the SIGINT of a forced stop.
FORCED_MARGIN = 3.0
#: Exit codes (those of a single worker: ``_run``).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FORCED = 0, 1, 2, 130

OnExit = Literal["restart", "stop"]


def parse_workers(value: str) -> int:
    """``--workers``: a count of at least 1, or ``auto`` (the number of cores).

    Raises:
        ValueError: anything else (the message names what is accepted).
    """
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"expected a number of processes or 'auto', got {value!r}") from None
    if count < 1:
        raise ValueError(f"expected at least 1 process (or 'auto'), got {count}")
    return count


def supervised(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """``(index, count)`` when this process is a worker started by a supervisor."""
    try:
        index, count = int(environ[INDEX_ENV]), int(environ[COUNT_ENV])
    except (KeyError, ValueError):
        return None
    return (index, count) if 0 <= index < count else None


def stop_with_parent(interval: float = 1.0) -> threading.Thread:
    """In a worker process: stop gracefully (SIGTERM to itself) once the supervisor is gone.

    A supervisor killed with SIGKILL cannot stop its children; each notices
    within ``interval`` that it was handed to another parent. A daemon thread
    polls ``os.getppid()``: no trio, nothing in the worker.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.write(2, f"the supervisor (pid {parent}) is gone: stopping gracefully\n".encode())
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="streamtrio-supervisor-watch", daemon=True)
    thread.start()
    return thread


def check_can_span(conf: Settings, count: int) -> None:
    """Refuse settings that cannot work with ``count`` > 1 worker processes.

    Raises:
        ConfigurationError: naming the setting and what to change.
    """
    if count <= 1:
        return
    if conf.broker.startswith("memory://"):
        raise ConfigurationError(
            f"--workers {count}: broker {conf.broker!r} lives inside one process and cannot be shared "
            "by several; give a Kafka broker (--broker kafka://host:port or the 'broker' setting), "
            "or run one worker (--workers 1)"
        )
    if conf.web_enabled and conf.web_canonical_url:
        raise ConfigurationError(
            f"--workers {count}: web_canonical_url={conf.web_canonical_url!r} would be the URL of every "
            "worker process, and the router needs one per worker; unset it (each worker then is "
            "http://<web_host>:<web_port + index>) or run one worker per host (--workers 1)"
        )


def child_overrides(conf: Settings, index: int) -> dict[str, Any]:
    """The settings that make worker ``index`` distinct from its siblings.

    Its own data dir (a shared one would share the worker id, and so the
    transactional id: the workers would fence each other), its own web and
    metrics ports (port 0 stays 0: each picks a free one), and, when they are
    set, its own ``worker_id`` and static member id.
    """
    overrides: dict[str, Any] = {"datadir": str(conf.data_path / f"worker-{index}")}
    if conf.web_port:
        overrides["web_port"] = conf.web_port + index
    if conf.metrics_port:
        overrides["metrics_port"] = conf.metrics_port + index
    if conf.worker_id:
        overrides["worker_id"] = f"{conf.worker_id}-{index}"
    if conf.consumer_group_instance_id:
        overrides["consumer_group_instance_id"] = f"{conf.consumer_group_instance_id}-{index}"
    return overrides


def worker_info(conf: Settings) -> dict[str, Any]:
    """What ``/stats/`` says about this process among its siblings (``process``)."""
    index, count = supervised() or (0, 1)
    info: dict[str, Any] = {"pid": os.getpid(), "worker_index": index, "workers": count}
    if conf.web_enabled and conf.web_port and not conf.web_canonical_url:
        base = conf.web_port - index
        info["web_urls"] = [f"http://{conf.web_host}:{base + i}" for i in range(count)]
    return info


def child_command() -> list[str]:
    """The command line of this process, to start it again as a child.

    ``sys.orig_argv`` keeps what ``sys.argv`` loses: interpreter options and
    ``-m module`` or ``-c code``. So ``streamtrio run app.py``, ``python -m
    streamtrio run mod:app`` and ``python myapp.py run`` (``app.main()``) are
    each started again the way the user started them.
    """
    return [sys.executable, *sys.orig_argv[1:]]


@dataclass
class Slot:
    """One worker process kept running by the supervisor (restarted in place).

    Attributes:
        index: 0 .. count-1; the child gets it in ``STREAMTRIO_WORKER_INDEX``.
        command: the child's command line.
        env: its whole environment.
        datadir, web_url: for the log (``None``: not known or none).
        process: the running child, if any.
        status: its last exit status (negative: killed by that signal).
        starts: how many times it was started.
        killed: it was killed (SIGKILL) at the stop's deadline.
    """

    index: int
    command: Sequence[str]
    env: Mapping[str, str]
    datadir: str | None = None
    web_url: str | None = None
    process: trio.Process | None = None
    status: int | None = None
    starts: int = 0
    killed: bool = False

    @property
    def name(self) -> str:
        return f"worker-{self.index}"


def describe_status(status: int | None) -> str:
    if status is None:
        return "never exited"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with {status}"


class Supervisor:
    """Keeps ``slots`` running until a signal (or a child's exit under ``on_exit="stop"``).

    Args:
        slots: the worker processes.
        on_exit: ``"restart"`` a child that exits on its own, or ``"stop"`` all.
        stop_timeout: seconds from a graceful stop to killing what is left.
        backoff, backoff_max, backoff_reset: restart delays: the first, the
            largest, and how long a child must run for the next delay to be
            the first again.
        banner: a line logged above the list of workers once all started.
    """

    def __init__(
        self,
        slots: Sequence[Slot],
        *,
        on_exit: OnExit = "restart",
        stop_timeout: float = 30.0 + STOP_MARGIN,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        backoff_reset: float = 60.0,
        banner: str = "",
    ) -> None:
        self.slots = list(slots)
        self.on_exit = on_exit
        self.stop_timeout = stop_timeout
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.backoff_reset = backoff_reset
        self.banner = banner
        self.stopping = trio.Event()
        self.forced = False
        self.failed: list[str] = []  # why the supervisor stops with 1 whatever the children do
        self._nursery: trio.Nursery | None = None

    # -- entry ------------------------------------------------------------------

    async def run(self) -> int:
        """Start the children, keep them, stop them; return the exit code."""
        async with trio.open_nursery() as outer:
            self._nursery = outer
            await outer.start(self._watch_signals)
            async with trio.open_nursery() as keepers:
                for slot in self.slots:
                    await keepers.start(self._keep, slot)
                self._log_banner()
            outer.cancel_scope.cancel()
        return self._exit_code()

    def stop(self, reason: str) -> None:
        """Stop every child gracefully (SIGTERM once), within ``stop_timeout``."""
        if self.stopping.is_set():
            return
        log.warning(
            "%s: stopping %d worker process(es) gracefully (SIGTERM; within %gs)",
            reason,
            self._running_count(),
            self.stop_timeout,
        )
        self.stopping.set()
        self._send_all(signal.SIGTERM)
        assert self._nursery is not None
        self._nursery.start_soon(self._kill_after, self.stop_timeout, "graceful stop")

    def force(self, reason: str) -> None:
        """Make every child exit at once (SIGINT after SIGTERM: they exit 130)."""
        self.forced = True
        self.stopping.set()
        log.warning("%s: worker processes exit at once (SIGINT), nothing more committed", reason)
        self._send_all(signal.SIGINT)
        assert self._nursery is not None
        self._nursery.start_soon(self._kill_after, FORCED_MARGIN, "exit at once")

    # -- tasks ------------------------------------------------------------------

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            task_status.started()
            signals = 0
            async for signum in received:
                name = signal.Signals(signum).name
                signals += 1
                if signals == 1 and not self.stopping.is_set():
                    self.stop(f"{name} received (send it again to exit at once)")
                elif signals == 1:
                    # Stopping already (--on-worker-exit stop): the operator's first signal
                    # asks for what is under way; only a second one forces it.
                    log.warning(
                        "%s received: already stopping gracefully (send it again to exit at once)", name
                    )
                elif not self.forced:
                    self.force(f"{name} received again")

    async def _keep(
        self, slot: Slot, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``slot``'s child; restart it when it exits on its own, per ``on_exit``."""
        delay = self.backoff
        started_once = False
        while True:
            process = await trio.lowlevel.open_process(
                list(slot.command),
                env=dict(slot.env),
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches only the supervisor.
                start_new_session=True,
            )
            slot.process = process
            slot.starts += 1
            began = trio.current_time()
            if started_once:
                log.info("%s started again (pid %d, start %d)", slot.name, process.pid, slot.starts)
            else:
                started_once = True
                task_status.started()
            if self.stopping.is_set():
                # A stop came while it was being started: it missed the SIGTERM.
                process.send_signal(signal.SIGINT if self.forced else signal.SIGTERM)
            try:
                slot.status = await process.wait()
            except BaseException:
                # The supervisor itself failed (cancelled by a sibling's error): no orphans.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                raise
            ran = trio.current_time() - began
            if self.stopping.is_set():
                level = logging.INFO if slot.status == 0 else logging.WARNING
                log.log(level, "%s (pid %d) %s", slot.name, process.pid, describe_status(slot.status))
                return
            what = f"{slot.name} (pid {process.pid}) {describe_status(slot.status)} after {ran:.1f}s"
            if slot.status == EXIT_USAGE:
                self.failed.append(f"{slot.name} {describe_status(slot.status)}")
                log.error("%s: the app cannot start (a restart would not help)", what)
                self.stop(f"{slot.name} cannot start")
                return
            if self.on_exit == "stop":
                self.failed.append(f"{slot.name} {describe_status(slot.status)}")
                log.error("%s; stopping the others (--on-worker-exit stop)", what)
                self.stop(f"{slot.name} exited")
                return
            if ran >= self.backoff_reset:
                delay = self.backoff  # it ran a while: a new failure, not the same one again
            log.warning("%s; restarting it in %gs", what, delay)
            with trio.move_on_after(delay):
                await self.stopping.wait()
            if self.stopping.is_set():
                log.info("%s not restarted: stopping", slot.name)
                return
            delay = min(delay * 2, self.backoff_max)

    async def _kill_after(self, seconds: float, what: str) -> None:
        await trio.sleep(seconds)
        left = [s for s in self.slots if s.process is not None and s.process.returncode is None]
        for slot in left:
            assert slot.process is not None
            log.error(
                "%s (pid %d) still running %gs after the %s: killing it (SIGKILL)",
                slot.name,
                slot.process.pid,
                seconds,
                what,
            )
            slot.killed = True
            try:
                os.killpg(slot.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- helpers ----------------------------------------------------------------

    def _send_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                try:
                    slot.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _running_count(self) -> int:
        return sum(1 for s in self.slots if s.process is not None and s.process.returncode is None)

    def _log_banner(self) -> None:
        lines = [self.banner or f"supervisor (pid {os.getpid()})"]
        for slot in self.slots:
            pid = slot.process.pid if slot.process is not None else "-"
            line = f"  {slot.name}  pid {pid}"
            if slot.datadir is not None:
                line += f"  datadir {slot.datadir}"
            line += f"  web {slot.web_url or 'disabled'}"
            lines.append(line)
        log.info("%s", "\n".join(lines))

    def _exit_code(self) -> int:
        if self.forced:
            return EXIT_FORCED
        unclean = [
            f"{s.name} {'killed (SIGKILL) after the deadline' if s.killed else describe_status(s.status)}"
            for s in self.slots
            if s.status != 0 or s.killed
        ]
        if self.failed or unclean:
            log.error("stopped with errors: %s", "; ".join(dict.fromkeys([*self.failed, *unclean])))
            return EXIT_ERROR
        log.info("all %d worker processes stopped cleanly", len(self.slots))
        return EXIT_OK


def slots_for(conf: Settings, count: int, command: Sequence[str] | None = None) -> list[Slot]:
    """The ``count`` worker processes of an app with settings ``conf``."""
    command = list(command) if command is not None else child_command()
    slots = []
    for index in range(count):
        overrides = child_overrides(conf, index)
        env = {**os.environ, INDEX_ENV: str(index), COUNT_ENV: str(count)}
        web_url = None
        if conf.web_enabled:
            port = overrides.get("web_port", conf.web_port)
            web_url = f"http://{conf.web_host}:{port}" if port else f"http://{conf.web_host}:<free port>"
        slots.append(Slot(index, command, env, datadir=overrides["datadir"], web_url=web_url))
    return slots


def supervise(
    conf: Settings, app_id: str, count: int, on_exit: OnExit, *, command: Sequence[str] | None = None
) -> int:
    """Run ``count`` worker processes of the app until a signal; return the exit code."""
    from ._version import __version__

    slots = slots_for(conf, count, command)
    banner = (
        f"streamtrio {__version__} - app {app_id!r}: {count} worker processes under supervisor "
        f"pid {os.getpid()} (broker {conf.broker}; a worker that exits is "
        f"{'restarted with backoff' if on_exit == 'restart' else 'the end of all: --on-worker-exit stop'})"
    )
    supervisor = Supervisor(
        slots,
        on_exit=on_exit,
        stop_timeout=conf.shutdown_timeout + STOP_MARGIN,
        banner=banner,
    )
    return trio.run(supervisor.run)
