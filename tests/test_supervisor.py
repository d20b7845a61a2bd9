"""``streamtrio run --workers N`` without a broker: the options, the per-worker settings, and the
supervisor's signals, restarts and exit codes with stand-in children (tests/apps/stand_in_worker.py).

The real thing against Kafka is tests/kafka/test_supervisor_kafka.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtrio import App
from streamtrio._supervisor import child_overrides, parse_workers

from .test_cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


class Logged:
    """A process whose standard output and error go to a file the test reads."""

    def __init__(self, command: list[str], log_path: Path, cwd: Path = ROOT) -> None:
        self.log_path = log_path
        self._file = open(log_path, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL, stdout=self._file, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 15.0, after_exit: bool = False) -> str:
        """Wait until ``text`` appears ``count`` times in the log; return the log. Unless
        ``after_exit`` (its children still write), the process exiting first fails."""
        deadline = time.monotonic() + timeout
        while (log := self.log()).count(text) < count:
            if not after_exit and self.proc.poll() is not None and self.log().count(text) < count:
                raise AssertionError(f"exited ({self.proc.returncode}) before {text!r} x{count}:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} x{count} within {timeout:g}s:\n{log}")
            time.sleep(0.02)
        return log

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"did not exit within {timeout:g}s:\n{self.log()}") from exc
        finally:
            self._file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._file.close()


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[object]:
    started: list[Logged] = []

    def start(
        *child_args: str,
        count: int = 2,
        on_exit: str = "restart",
        stop_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.1, 0.4),
    ) -> Logged:
        command = [
            sys.executable,
            str(APPS / "supervise_stand_ins.py"),
            str(count),
            on_exit,
            str(stop_timeout),
            str(backoff[0]),
            str(backoff[1]),
            "--",
            sys.executable,
            str(APPS / "stand_in_worker.py"),
            *child_args,
        ]
        logged = Logged(command, tmp_path / f"supervisor-{len(started)}.log")
        started.append(logged)
        return logged

    yield start
    for logged in started:
        logged.kill()


def pids(log: str, index: int) -> list[int]:
    return [int(p) for p in re.findall(rf"stand-in {index} of \d+ ready \(pid (\d+)\)", log)]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- options and per-worker settings -----------------------------------------------------


def test_workers_is_a_count_or_auto() -> None:
    assert parse_workers("auto") == os.cpu_count()
    assert parse_workers("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="'auto'"):
            parse_workers(bad)


def test_bad_workers_values_are_usage_errors() -> None:
    for args in (["--workers", "0"], ["--workers", "two"], ["--workers", "2", "--on-worker-exit", "ignore"]):
        result = run_cli("run", "examples/wordcount.py", *args)
        assert result.returncode == 2, result.stderr
        assert "Invalid value for '--workers'" in result.stderr or "'--on-worker-exit'" in result.stderr


def test_memory_broker_with_several_workers_is_refused_naming_the_setting() -> None:
    result = run_cli("run", "examples/wordcount.py", "--workers", "2")
    assert result.returncode == 2, result.stderr
    assert "error: --workers 2: broker 'memory://' lives inside one process" in result.stderr
    assert "--broker kafka://host:port or the 'broker' setting" in result.stderr
    assert "--workers 1" in result.stderr
    assert "worker-0" not in result.stderr  # nothing was started


def test_one_worker_on_memory_is_still_a_plain_worker() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamtrio", "run", "examples/wordcount.py", "--workers", "1", "--help"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "--workers N" in result.stdout and "--on-worker-exit POLICY" in result.stdout


def test_each_worker_gets_its_own_data_dir_ports_and_ids(tmp_path: Path) -> None:
    app = App(
        "shop",
        broker="kafka://localhost:9092",
        datadir=str(tmp_path / "{appid}-data"),
        web_port=7000,
        metrics_port=9100,
    )
    assert child_overrides(app.conf, 0) == {
        "datadir": str(tmp_path / "shop-data" / "worker-0"),
        "web_port": 7000,
        "metrics_port": 9100,
    }
    assert child_overrides(app.conf, 3) == {
        "datadir": str(tmp_path / "shop-data" / "worker-3"),
        "web_port": 7003,
        "metrics_port": 9103,
    }
    named = App("shop", broker="kafka://x:1", web_port=0, worker_id="w", consumer_group_instance_id="member")
    overrides = child_overrides(named.conf, 2)
    assert "web_port" not in overrides  # port 0: each worker picks a free one
    assert overrides["worker_id"] == "w-2"
    assert overrides["consumer_group_instance_id"] == "member-2"


def test_a_bound_app_is_started_again_as_the_user_started_it(tmp_path: Path) -> None:
    """``python app.py run --workers 2``: each worker runs the script again, with its place in the
    environment, as a worker (never a supervisor of its own)."""
    logged = Logged(
        [
            sys.executable,
            str(APPS / "bound_supervised.py"),
            "run",
            "--workers",
            "2",
            "--broker",
            "kafka://127.0.0.1:1",
            "--on-worker-exit",
            "stop",
        ],
        tmp_path / "bound.log",
        cwd=tmp_path,
    )
    try:
        code = logged.wait(timeout=30)
    finally:
        logged.kill()
    log = logged.log()
    argv = "argv ['run', '--workers', '2', '--broker', 'kafka://127.0.0.1:1', '--on-worker-exit', 'stop']"
    assert f"imported: worker None of None, {argv}" in log  # the supervisor
    assert f"imported: worker 0 of 2, {argv}" in log
    assert f"imported: worker 1 of 2, {argv}" in log
    assert log.count("2 worker processes under supervisor") == 1, log
    assert "worker-0  pid" in log and "datadir bound-supervised-data/worker-0" in log
    # the first that gives up stops the other, which then ends its start at once (or gave up too)
    assert "streamtrio._run: worker could not start: cannot reach the Kafka broker" in log
    for index in (0, 1):
        ended = rf"\[worker-{index}\] streamtrio\._(run: worker could not start|worker: stopped while start)"
        assert re.search(ended, log), log
    assert "names no streamtrio setting" not in log  # STREAMTRIO_WORKER_INDEX is not a setting
    assert code == 1
    assert re.search(r"worker-\d \(pid \d+\) exited with 1 after [\d.]+s; stopping the others", log), log


# -- signals, restarts, exit codes (stand-in children) -----------------------------------


def test_ctrl_c_stops_every_worker_gracefully_and_exits_0(supervise) -> None:  # type: ignore[no-untyped-def]
    sup = supervise()
    log = sup.wait_for("ready", count=2)
    children = pids(log, 0) + pids(log, 1)
    # each in a session of its own: a terminal's Ctrl-C reaches only the supervisor
    assert all(os.getsid(pid) == pid for pid in children)
    sup.proc.send_signal(signal.SIGINT)
    assert sup.wait() == 0, sup.log()
    log = sup.log()
    assert "SIGINT received (send it again to exit at once): stopping 2 worker process(es)" in log
    assert "stand-in 0 stopping gracefully" in log and "stand-in 1 stopping gracefully" in log
    assert "all 2 worker processes stopped cleanly" in log
    assert all(gone(pid) for pid in children)


def test_a_worker_that_fails_its_stop_makes_the_exit_status_1_naming_it(supervise) -> None:  # type: ignore[no-untyped-def]
    sup = supervise("--term-exit", "1", count=1)
    sup.wait_for("ready")
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.wait() == 1
    assert "stopped with errors: worker-0 exited with 1" in sup.log()


def test_second_signal_makes_the_workers_exit_at_once_with_130(supervise) -> None:  # type: ignore[no-untyped-def]
    sup = supervise("--ignore-term")
    sup.wait_for("ready", count=2)
    sup.proc.send_signal(signal.SIGINT)
    sup.wait_for("ignores SIGTERM", count=2)
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.wait() == 130, sup.log()
    log = sup.log()
    assert "SIGTERM received again: worker processes exit at once (SIGINT)" in log
    assert "stand-in 0 exits at once" in log and "stand-in 1 exits at once" in log


def test_workers_still_running_after_the_deadline_are_killed_by_name(supervise) -> None:  # type: ignore[no-untyped-def]
    sup = supervise("--ignore-term", stop_timeout=0.5)
    log = sup.wait_for("ready", count=2)
    children = pids(log, 0) + pids(log, 1)
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.wait() == 1, sup.log()
    log = sup.log()
    for index, pid in enumerate(children):
        assert f"worker-{index} (pid {pid}) still running 0.5s after the graceful stop: killing it" in log
    assert "worker-0 killed (SIGKILL) after the deadline; worker-1 killed (SIGKILL)" in log
    assert all(gone(pid) for pid in children)


def test_workers_stop_gracefully_when_the_supervisor_is_killed(supervise) -> None:  # type: ignore[no-untyped-def]
    sup = supervise()
    log = sup.wait_for("ready", count=2)
    children = pids(log, 0) + pids(log, 1)
    sup.proc.kill()
    sup.wait()
    # each child says both lines; "stopping gracefully" alone would match one child's two
    log = sup.wait_for("is gone: stopping gracefully", count=2, after_exit=True)
    for index in (0, 1):
        log = sup.wait_for(f"stand-in {index} stopping gracefully", after_exit=True)
    assert log.count("is gone: stopping gracefully") == 2
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in children):
        assert time.monotonic() < deadline, f"children left running: {children}"
        time.sleep(0.02)


def test_a_crashing_worker_is_restarted_with_growing_backoff(supervise) -> None:  # type: ignore[no-untyped-def]
    sup = supervise("--crash", "1", backoff=(0.1, 0.4))
    log = sup.wait_for("restarting it in 0.4s", count=2)
    delays = re.findall(r"worker-1 \(pid \d+\) exited with 3 after [\d.]+s; restarting it in ([\d.]+)s", log)
    assert delays[:4] == ["0.1", "0.2", "0.4", "0.4"], log
    assert "worker-1 started again" in log
    assert len(pids(log, 0)) == 1  # the other one carries on
    sup.proc.send_signal(signal.SIGINT)
    # its last run crashed: the supervisor does not claim a clean stop
    assert sup.wait() == 1
    assert "stopped with errors: worker-1 " in sup.log()


def test_a_killed_worker_is_restarted_and_a_clean_stop_after_exits_0(supervise) -> None:  # type: ignore[no-untyped-def]
    sup = supervise(backoff=(0.1, 0.4))
    log = sup.wait_for("ready", count=2)
    [victim] = pids(log, 0)
    os.kill(victim, signal.SIGKILL)
    log = sup.wait_for("stand-in 0 of 2 ready", count=2)
    assert f"worker-0 (pid {victim}) killed by SIGKILL after" in log
    assert "restarting it in 0.1s" in log
    [_, again] = pids(log, 0)
    sup.proc.send_signal(signal.SIGINT)
    assert sup.wait() == 0, sup.log()
    assert gone(again)


def test_on_exit_stop_ends_the_others_gracefully_and_exits_1(supervise) -> None:  # type: ignore[no-untyped-def]
    sup = supervise(on_exit="stop")
    log = sup.wait_for("ready", count=2)
    [victim] = pids(log, 1)
    os.kill(victim, signal.SIGKILL)
    assert sup.wait() == 1, sup.log()
    log = sup.log()
    assert re.search(rf"worker-1 \(pid {victim}\) killed by SIGKILL after [\d.]+s; stopping the others", log)
    assert len(pids(log, 1)) == 1  # not restarted
    assert "stand-in 0 stopping gracefully" in log and re.search(r"worker-0 \(pid \d+\) exited with 0", log)
    assert "stopped with errors: worker-1 killed by SIGKILL" in log


def test_a_first_signal_during_a_policy_stop_does_not_force_it(supervise) -> None:  # type: ignore[no-untyped-def]
    """Failed before: the supervisor counted the policy's stop as the first signal, so
    an operator's first Ctrl-C made every worker exit at once, nothing more committed."""
    sup = supervise("--ignore-term", on_exit="stop")
    log = sup.wait_for("ready", count=2)
    [victim] = pids(log, 1)
    os.kill(victim, signal.SIGKILL)
    sup.wait_for("stand-in 0 ignores SIGTERM")  # the policy's graceful stop is under way
    sup.proc.send_signal(signal.SIGINT)
    log = sup.wait_for("SIGINT received: already stopping gracefully (send it again to exit at once)")
    assert "exits at once" not in log
    sup.proc.send_signal(signal.SIGINT)
    assert sup.wait() == 130, sup.log()
    assert "SIGINT received again: worker processes exit at once (SIGINT)" in sup.log()
    assert "stand-in 0 exits at once" in sup.log()
