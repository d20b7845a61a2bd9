"""One deadline per stop, whatever the broker does (ARCHITECTURE rule 10).

A worker process is stopped with SIGTERM while the broker is frozen
(SIGSTOP), while it is gone (killed), and while an agent never returns. Each
time the process must exit within ``shutdown_timeout`` plus a 2 s margin,
with exit status 1 and a log naming what was not committed. Each scenario runs
``STREAMTRIO_SHUTDOWN_REPEAT`` times (default 3; the hang this guards against
was seen once in ten runs).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from streamtrio.testing import KafkaTestBroker
from streamtrio.testing._broker import TEST_BROKER_ENV, open_test_broker

from ._util import APPS, WorkerProcess, create_topic, produce, spread_keys, unique, wait_for

pytestmark = pytest.mark.slow

STOPPER = APPS / "stopper.py"
SHUTDOWN_TIMEOUT = 3.0
#: The promise: stop request to process exit within shutdown_timeout + this.
MARGIN = 2.0
REPEAT = int(os.environ.get("STREAMTRIO_SHUTDOWN_REPEAT", "3"))
PARTITIONS = 4


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def _start(bootstrap: str, tmp_path: Path, mode: str) -> tuple[WorkerProcess, Path]:
    app_id = unique("stopper")
    topic = unique("stop-events")
    await trio.to_thread.run_sync(create_topic, bootstrap, topic, PARTITIONS)
    await trio.to_thread.run_sync(produce, bootstrap, topic, spread_keys(3000))
    out = tmp_path / f"{app_id}.out"
    worker = WorkerProcess(
        app_id,
        STOPPER,
        bootstrap,
        tmp_path,
        {
            "STOPPER_APP_ID": app_id,
            "STOPPER_TOPIC": topic,
            "STOPPER_PARTITIONS": str(PARTITIONS),
            "STOPPER_OUT": str(out),
            "STOPPER_MODE": mode,
            "STOPPER_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        },
    )
    return worker, out


async def _stop_timed(worker: WorkerProcess) -> tuple[int, float]:
    """SIGTERM, then the exit status and seconds from the signal to the exit."""
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = await worker.wait_async(SHUTDOWN_TIMEOUT + 60)
    elapsed = time.monotonic() - started
    print(f"{worker.name}: SIGTERM to exit {elapsed:.2f}s, exit status {code}")
    return code, elapsed


@contextmanager
def _frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _own_broker_pid(broker: KafkaTestBroker) -> int:
    if broker.pid is None:
        pytest.skip(f"{TEST_BROKER_ENV} names an external broker; this test freezes the session's own")
    return broker.pid


@pytest.mark.parametrize("attempt", range(REPEAT))
async def test_stop_with_the_broker_frozen_exits_in_time_non_zero_naming_the_offsets(
    kafka_broker: KafkaTestBroker, tmp_path: Path, attempt: int
) -> None:
    pid = _own_broker_pid(kafka_broker)
    worker, out = await _start(kafka_broker.bootstrap, tmp_path, "count")
    try:
        await wait_for(lambda: _lines(out) >= 200, timeout=60, what="the first 200 events")
        with _frozen(pid):
            code, elapsed = await _stop_timed(worker)
    finally:
        worker.kill()
    log = worker.log()
    assert elapsed <= SHUTDOWN_TIMEOUT + MARGIN, f"exit took {elapsed:.1f}s:\n{log[-3000:]}"
    assert code == 1, log[-3000:]
    assert "not committed" in log, log[-3000:]


@pytest.mark.parametrize("attempt", range(REPEAT))
async def test_stop_with_the_broker_gone_exits_in_time_non_zero(tmp_path: Path, attempt: int) -> None:
    if os.environ.get(TEST_BROKER_ENV, "").strip():
        pytest.skip(f"{TEST_BROKER_ENV} names an external broker; this test kills a broker of its own")
    with open_test_broker() as broker:
        assert broker.pid is not None
        worker, out = await _start(broker.bootstrap, tmp_path, "count")
        try:
            await wait_for(lambda: _lines(out) >= 200, timeout=60, what="the first 200 events")
            os.kill(broker.pid, signal.SIGKILL)
            code, elapsed = await _stop_timed(worker)
        finally:
            worker.kill()
    log = worker.log()
    assert elapsed <= SHUTDOWN_TIMEOUT + MARGIN, f"exit took {elapsed:.1f}s:\n{log[-3000:]}"
    assert code == 1, log[-3000:]
    assert "not committed" in log, log[-3000:]


@pytest.mark.parametrize("attempt", range(REPEAT))
async def test_stop_with_an_agent_that_never_returns_exits_in_time_naming_the_event(
    kafka_broker: KafkaTestBroker, tmp_path: Path, attempt: int
) -> None:
    worker, out = await _start(kafka_broker.bootstrap, tmp_path, "hang")
    try:
        await wait_for(lambda: _lines(out) >= 1, timeout=60, what="the first event")
        code, elapsed = await _stop_timed(worker)
    finally:
        worker.kill()
    log = worker.log()
    assert elapsed <= SHUTDOWN_TIMEOUT + MARGIN, f"exit took {elapsed:.1f}s:\n{log[-3000:]}"
    assert code == 1, log[-3000:]
    partition, offset = map(int, out.read_text().split())
    assert f"[{partition}]@{offset}" in log or f"{partition}]@{offset}" in log, log[-3000:]
