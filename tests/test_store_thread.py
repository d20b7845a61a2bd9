"""Table work never blocks the trio thread: LMDB writes and fsync run on the store's thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import streamtrio
from streamtrio import TP
from streamtrio._tables.lmdb import LMDBStore
from streamtrio._tables.thread import StoreThread
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

log = logging.getLogger(__name__)

PARTITIONS = 4
TABLES = 2
KEYS = 1000  # distinct keys per table: every commit writes thousands of keys


class LagProbe:
    """How late ``trio.sleep(0.005)`` wakes up, on the real clock."""

    def __init__(self) -> None:
        self.lags: list[tuple[float, float]] = []  # (woke at, lag)

    async def run(self) -> None:
        while True:
            began = time.perf_counter()
            await trio.sleep(0.005)
            woke = time.perf_counter()
            self.lags.append((woke, woke - began - 0.005))


class TrioThreadStoreTime:
    """Wall time the trio thread spends inside blocking LMDB store calls, per call."""

    BLOCKING = ("write_batch", "partition", "drop_partition", "close")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trio_thread = threading.current_thread()
        self.calls: list[tuple[str, float, float]] = []  # (method, began, seconds)
        for name in self.BLOCKING:
            monkeypatch.setattr(LMDBStore, name, self._wrap(name, getattr(LMDBStore, name)))

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(store: LMDBStore, *args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return method(store, *args, **kwargs)
            finally:
                if threading.current_thread() is self.trio_thread:
                    self.calls.append((name, began, time.perf_counter() - began))

        return wrapper

    def overlapping(self, woke: float, lag: float) -> bool:
        """Whether a store call on the trio thread ran while the probe was late."""
        late_from = woke - lag
        return any(began < woke and began + took > late_from for _, began, took in self.calls)


async def test_commits_of_thousands_of_keys_never_block_the_loop(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocking = TrioThreadStoreTime(monkeypatch)
    app = app_factory(store="lmdb://", datadir=str(tmp_path / "data"), lmdb_sync=True, commit_interval=0.05)
    source = app.topic("events", key_type=str, value_type=int, partitions=PARTITIONS)
    tables = [
        app.Table(f"t{i}", default=int, key_type=str, value_type=int, partitions=PARTITIONS)
        for i in range(TABLES)
    ]

    @app.agent(source)
    async def count(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            for table in tables:
                table[event.key] += event.value

    rounds = 20
    async with app.open_client():
        for r in range(rounds):
            for k in range(KEYS):
                source.send_soon(key=f"key-{k}", value=r + 1)
        await app.producer.flush()
    expected = dict.fromkeys((f"key-{k}" for k in range(KEYS)), sum(range(1, rounds + 1)))

    probe = LagProbe()
    async with trio.open_nursery() as nursery, running(app):
        nursery.start_soon(probe.run)
        ends = {TP("events", p): broker.end_offset(TP("events", p)) for p in range(PARTITIONS)}
        await wait_for(lambda: broker.committed(app.id) == ends, timeout=60)
        assert all(dict(table.items()) == expected for table in tables)
        nursery.cancel_scope.cancel()
    commits = [took for name, _, took in blocking.calls if name == "write_batch"]
    by_tables = [lag for woke, lag in probe.lags if blocking.overlapping(woke, lag)]
    log.info(
        "loop lag: max %.1f ms over %d probes (max %.1f ms while the store blocked the loop); "
        "store calls on the trio thread: %d taking %.1f ms, of which %d commits (max %.1f ms)",
        max(lag for _, lag in probe.lags) * 1e3,
        len(probe.lags),
        max(by_tables, default=0.0) * 1e3,
        len(blocking.calls),
        sum(took for _, _, took in blocking.calls) * 1e3,
        len(commits),
        max(commits, default=0.0) * 1e3,
    )
    # The loop is never blocked by table work: no LMDB write, fsync or close runs on
    # the trio thread (each such commit took several ms with lmdb_sync on).
    assert [name for name, _, _ in blocking.calls] == []
    assert max(by_tables, default=0.0) < 0.050


async def test_store_jobs_take_no_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    """Under an autojumping MockClock a store job must not let the clock jump to the next deadline."""
    thread = StoreThread("test-store-thread")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 30)  # a pending deadline the clock could jump to
            began = trio.current_time()
            assert await thread.run(lambda: time.sleep(0.2) or 7) == 7
            assert trio.current_time() == began
            with pytest.raises(ValueError):
                await thread.run(int, "x")
            assert trio.current_time() == began
            nursery.cancel_scope.cancel()
    finally:
        assert thread.stop(5)
