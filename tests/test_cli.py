"""The command line, run as a user would: real processes, exit codes, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "streamtrio"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_crashing_agent_exits_non_zero_with_traceback_and_offset() -> None:
    result = run_cli("run", "tests/apps/crashing.py", "--loglevel", "info")
    assert result.returncode == 1, result.stderr
    assert "processed 5" in result.stdout
    assert "processed 6" not in result.stdout
    assert "RuntimeError: five is not allowed" in result.stderr
    assert "topic='numbers' partition=0 offset=5" in result.stderr
    # the final commit stops before the failing event
    assert "final commit: numbers[0]@5" in result.stderr


def test_sigint_stops_gracefully_with_offsets_committed() -> None:
    proc = start_cli("run", "examples/wordcount.py")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first report: the worker is processing
        assert "words counted" in line
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert elapsed < 30
    assert "shutting down gracefully" in err
    assert "final commit: sentences[" in err


def test_bad_app_paths_are_clear_errors() -> None:
    missing = run_cli("run", "tests/apps/nope.py")
    assert missing.returncode == 2
    assert "no such file 'tests/apps/nope.py'" in missing.stderr
    no_module = run_cli("agents", "no_such_module_xyz")
    assert no_module.returncode == 2
    assert "cannot import 'no_such_module_xyz'" in no_module.stderr
    wrong_attr = run_cli("agents", "tests/apps/crashing.py:application")
    assert wrong_attr.returncode == 2
    assert "has no attribute 'application' (it has: app)" in wrong_attr.stderr


def test_bad_setting_on_command_line_is_a_clear_error() -> None:
    result = run_cli("run", "tests/apps/crashing.py", "--broker", "amqp://x")
    assert result.returncode == 2
    assert "setting 'broker': unsupported URL 'amqp://x'" in result.stderr


def test_agents_and_topics_listings() -> None:
    agents = run_cli("agents", "tests/apps/crashing.py")
    assert agents.returncode == 0, agents.stderr
    assert agents.stdout.startswith("fragile\t<- numbers\tconcurrency 1")
    topics = run_cli("topics", "examples/wordcount.py")
    assert topics.returncode == 0, topics.stderr
    assert "sentences\t4 partitions\tsource" in topics.stdout


def test_app_main_gives_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "examples/wordcount.py", "agents"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, result.stderr
    assert "count_words\t<- sentences\tconcurrency 2" in result.stdout


def test_console_script_help() -> None:
    result = subprocess.run(["streamtrio", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    for command in ("run", "send", "topics", "agents"):
        assert command in result.stdout


def test_send_prints_where_the_message_landed() -> None:
    result = run_cli("send", "examples/wordcount.py", "sentences", "hello there", "--key", "k1")
    assert result.returncode == 0, result.stderr
    import json

    landed = json.loads(result.stdout)
    assert landed["topic"] == "sentences"
    assert landed["offset"] == 0
    from streamtrio._partitioner import partition_for_key

    assert landed["partition"] == partition_for_key(b"k1", 4)


def test_user_command_runs_async_with_producer() -> None:
    result = subprocess.run(
        [sys.executable, "tests/apps/commands.py", "greet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent to greetings[")


def test_second_sigint_exits_at_once_while_user_code_blocks_the_loop() -> None:
    """Seen: two SIGINTs, one log line, exit only after the agent's time.sleep(20) returned."""
    proc = start_cli("run", "tests/apps/blocking.py")
    try:
        assert proc.stdout is not None
        assert "blocking the loop" in proc.stdout.readline()
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert elapsed < 5
    assert "SIGINT received again: exiting at once, without committing" in err


def test_second_signal_after_the_graceful_stop_still_exits_130() -> None:
    """Seen in the chaos suite (tests/chaos/test_signals.py): a SIGINT after the graceful
    stop, while the process was ending, died by the signal (-2) instead of exiting 130."""
    proc = start_cli("run", "tests/apps/slow_exit.py")
    try:
        assert proc.stdout is not None
        assert "ready" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        assert "exiting slowly" in proc.stdout.readline()  # run() returned; the process ends
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "SIGINT received again: exiting at once" in err


def test_a_signal_arriving_as_the_process_ends_exits_130() -> None:
    """Seen once in five in the chaos suite (SIGTERM, then SIGINT while the process ends):
    the SIGINT came after the last Python instruction that runs signal handlers, just
    before ``os._exit(0)``; its handler never ran and the process exited 0. Here the
    signal is pending (blocked) when the process ends: 0 before, 130 now."""
    script = textwrap.dedent(
        """
        import os, signal
        from streamtrio import _run
        signals = _run._Signals()
        signals.install()
        signals.received = 1  # the first signal asked for the stop
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        os.kill(os.getpid(), signal.SIGINT)  # the second, arriving as the process ends
        _run._end_process(0)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert "SIGINT received again: exiting at once, without committing" in proc.stderr


def test_a_signal_while_the_interpreter_finalizes_does_not_kill_the_process() -> None:
    """Seen in the chaos suite: a SIGINT after the graceful stop, while Python destroyed
    what was left (its SIGINT handler reset to the default), killed the process by the
    signal (-2). After a signalled stop ``streamtrio run`` now ends the process itself,
    right after the atexit hooks."""
    proc = start_cli("run", "tests/apps/slow_finalize.py")
    try:
        assert proc.stdout is not None
        assert "ready" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        line = proc.stdout.readline()
        if "finalizing slowly" in line:  # before: the process sat in finalization
            proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, (proc.returncode, err)
    assert "SIGTERM received: shutting down gracefully" in err
