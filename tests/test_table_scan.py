"""``async for key, value in table.scan()``: a full read of a table that lets the worker run
between chunks (``items()`` reads on the calling thread, see docs/tables.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.lowlevel

import streamtrio
from streamtrio.testing import AppFactory

from .conftest import running, wait_for
from .test_tables import corpus, produce, word_count_app


@pytest.mark.parametrize("store", ["memory://", "lmdb://"])
async def test_scan_reads_what_items_reads_and_lets_the_loop_run(
    app_factory: AppFactory, tmp_path: Path, store: str
) -> None:
    app, counts = word_count_app(app_factory, store=store, datadir=str(tmp_path), lmdb_sync=False)
    words = corpus(6000, vocabulary=3000)
    async with running(app):
        await produce(app, words)
        await wait_for(lambda: sum(counts.values()) == len(words), timeout=30)
        await app.tables.flush()
        counts["unpersisted"] = 1  # an uncommitted write is seen too
        del counts[words[0]]  # and a delete
        expected = dict(counts.items())
        assert len(expected) == 3000

        ticks = 0
        scanning = True

        async def probe() -> None:  # another task of the worker: a web view, a partition
            nonlocal ticks
            while scanning:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            scanned = [pair async for pair in counts.scan(chunk=100)]
            scanning = False
        assert dict(scanned) == expected and len(scanned) == len(expected)
        assert ticks >= len(expected) // 100  # it ran between (at least) every two chunks

    with pytest.raises(streamtrio.ClosedError):
        [pair async for pair in counts.scan()]


async def test_scan_chunk_must_be_positive(app_factory: AppFactory) -> None:
    app, counts = word_count_app(app_factory)
    async with running(app):
        with pytest.raises(ValueError, match="at least 1 key"):
            [pair async for pair in counts.scan(chunk=0)]
