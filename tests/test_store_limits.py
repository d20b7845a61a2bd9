"""A full LMDB map grows; at lmdb_max_map_size the worker stops, and a bigger limit recovers all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

PARTITIONS = 2
KEYS = 3000
VALUE = "x" * 1000  # 3000 keys of 1 kB: about 3.5 MB of LMDB pages


def blob_app(app_factory: AppFactory, datadir: Path, **options: Any) -> tuple[streamtrio.App, Any]:
    app = app_factory(store="lmdb://", datadir=str(datadir), lmdb_sync=False, commit_interval=0.05, **options)
    source = app.topic("blobs", key_type=str, value_type=str, partitions=PARTITIONS)
    blobs = app.Table("blobs", default=str, key_type=str, value_type=str, partitions=PARTITIONS)

    @app.agent(source)
    async def store_it(stream: streamtrio.Stream[str]) -> None:
        async for event in stream.events():
            blobs[event.key] = event.value

    return app, blobs


async def test_map_full_at_the_limit_stops_the_worker_then_a_bigger_limit_recovers_everything(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datadir = tmp_path / "data"
    app, _ = blob_app(app_factory, datadir, lmdb_map_size=1 << 20, lmdb_max_map_size=2 << 20)
    async with app.open_client():
        topic = app._topic_named("blobs")
        for k in range(KEYS):
            topic.send_soon(key=f"key-{k}", value=VALUE)
        await app.producer.flush()
    caplog.set_level(logging.INFO, logger="streamtrio._tables.lmdb")
    with pytest.raises(streamtrio.StreamtrioError) as info:
        with trio.fail_after(60):
            await streamtrio.serve(app)
    error: BaseException | None = info.value
    while error is not None and not isinstance(error, streamtrio.StoreError):
        error = error.__cause__
    assert error is not None, repr(info.value)
    text = str(error)
    assert "lmdb_max_map_size" in text and "'blobs'" in text, text
    assert "map grown from 1048576 to 2097152 bytes" in caplog.text

    # A restart with the same limit fails again, in recovery this time: still named.
    app2, _ = blob_app(app_factory, datadir, lmdb_map_size=1 << 20, lmdb_max_map_size=2 << 20)
    with pytest.raises(streamtrio.StreamtrioError, match="lmdb_max_map_size"):
        with trio.fail_after(60):
            await streamtrio.serve(app2)

    # With a bigger limit everything comes back from the changelog, and the rest is processed.
    app3, blobs3 = blob_app(app_factory, datadir, lmdb_map_size=1 << 20, lmdb_max_map_size=64 << 20)
    async with running(app3):
        ends = {TP("blobs", p): broker.end_offset(TP("blobs", p)) for p in range(PARTITIONS)}
        await wait_for(lambda: broker.committed(app3.id) == ends, timeout=60)
        assert dict(blobs3.items()) == {f"key-{k}": VALUE for k in range(KEYS)}
        stats = app3.tables.store.statistics()
        assert stats.map_size is not None and stats.map_size > 2 << 20
