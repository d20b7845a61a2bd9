"""A damaged or deleted LMDB data dir is detected at start and rebuilt from the changelog."""

from __future__ import annotations

import logging
import random
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import streamtrio
from streamtrio import TP
from streamtrio._tables.lmdb import CORRUPTED_DIR, LMDBStore
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

PARTITIONS = 4


def count_app(app_factory: AppFactory, datadir: Path, standbys: int = 0) -> tuple[streamtrio.App, Any]:
    app = app_factory(
        store="lmdb://", datadir=str(datadir), commit_interval=0.05, table_standby_replicas=standbys
    )
    words = app.topic("words", key_type=str, value_type=str, partitions=PARTITIONS)
    counts = app.Table("counts", default=int, key_type=str, value_type=int, partitions=PARTITIONS)

    @app.agent(words)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for word in stream:
            counts[word] += 1

    return app, counts


def truncate(datadir: Path) -> None:
    data = datadir / "data.mdb"
    size = data.stat().st_size
    with data.open("r+b") as f:
        f.truncate(size // 2)


def garble_a_value(datadir: Path) -> None:
    """Flip one byte inside a stored value: only a checksum can tell."""
    data = datadir / "data.mdb"
    raw = bytearray(data.read_bytes())
    key = b"word-123"
    at = raw.find(key)
    while at >= 0:  # copy-on-write leaves old copies of the page: garble every copy
        raw[at + len(key) + 2] ^= 0x40  # LMDB stores a value right after its key
        at = raw.find(key, at + 1)
    data.write_bytes(raw)


def garble_pages(datadir: Path) -> None:
    """Random bytes over the start of every data page (page headers and nodes)."""
    data = datadir / "data.mdb"
    raw = bytearray(data.read_bytes())
    rng = random.Random(20)
    for page in range(2, len(raw) // 4096):
        for i in range(page * 4096, page * 4096 + 64):
            raw[i] = rng.randrange(256)
    data.write_bytes(raw)


def delete(datadir: Path) -> None:
    shutil.rmtree(datadir)


@pytest.mark.parametrize("damage", [truncate, garble_a_value, garble_pages, delete])
async def test_damaged_store_is_rebuilt_from_the_changelog_with_a_warning(
    app_factory: AppFactory,
    broker: MemoryBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
) -> None:
    datadir = tmp_path / "data"
    words = [f"word-{(i * 7919) % 500}" for i in range(5000)]
    expected = Counter(words)
    app, counts = count_app(app_factory, datadir)
    async with app.open_client():
        topic = app._topic_named("words")
        for word in words:
            topic.send_soon(key=word, value=word)
        await app.producer.flush()
    ends = {TP("words", p): broker.end_offset(TP("words", p)) for p in range(PARTITIONS)}
    async with running(app):
        await wait_for(lambda: broker.committed(app.id) == ends, timeout=60)
        assert dict(counts.items()) == expected

    damage(datadir)
    caplog.set_level(logging.WARNING)
    app2, counts2 = count_app(app_factory, datadir)
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        assert dict(counts2.items()) == expected
        store = app2.tables.store
        assert isinstance(store, LMDBStore)
        assert store.fresh
    assert f"the store in {datadir} was rebuilt from the changelogs" in caplog.text
    if damage is not delete:
        assert f"the LMDB store in {datadir} is damaged" in caplog.text
        assert (datadir / CORRUPTED_DIR / "data.mdb").exists()
    if damage is garble_a_value:
        assert "a checksum failed in t:counts:" in caplog.text


async def test_a_deleted_store_rebuilt_by_the_standby_follower_is_warned_about_too(
    app_factory: AppFactory,
    broker: MemoryBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen in the chaos suite: with standbys on (the default), the follower had refilled
    the deleted store before the assignment, the recovery replayed 0 records, and no
    warning named the directory."""
    datadir = tmp_path / "data"
    words = [f"word-{(i * 7919) % 500}" for i in range(2000)]
    app, _ = count_app(app_factory, datadir, standbys=1)
    async with app.open_client():
        topic = app._topic_named("words")
        for word in words:
            topic.send_soon(key=word, value=word)
        await app.producer.flush()
    ends = {TP("words", p): broker.end_offset(TP("words", p)) for p in range(PARTITIONS)}
    async with running(app):
        await wait_for(lambda: broker.committed(app.id) == ends, timeout=60)
    delete(datadir)
    caplog.set_level(logging.WARNING)
    changelog = sum(broker.end_offset(TP("testapp-counts-changelog", p)) for p in range(PARTITIONS))
    app2, counts2 = count_app(app_factory, datadir, standbys=1)
    manager = app2.tables
    on_assign = manager._on_assign

    async def after_the_follower(assigned: frozenset[TP]) -> None:
        # The follower has read every changelog record before the recovery starts.
        await wait_for(lambda: sum(manager._followed.values()) >= changelog, timeout=30)
        await on_assign(assigned)

    monkeypatch.setattr(manager, "_on_assign", after_the_follower)
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        assert dict(counts2.items()) == Counter(words)
    assert f"the store in {datadir} was rebuilt from the changelogs" in caplog.text
