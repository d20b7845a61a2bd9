"""Staging a replayed batch: runs of one partition's records, interleaved partitions,
records without a key and partitions not recovered here."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from streamtrio import TP
from streamtrio._tables.recovery import apply_messages
from streamtrio._types import Message


def msg(partition: int, offset: int, key: bytes | None, value: bytes | None, topic: str = "cl") -> Message:
    return Message(topic, partition, offset, key, value, 0.0)


def test_interleaved_partitions_stage_their_last_values_offsets_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counts_table = SimpleNamespace(name="counts", _on_changelog_event=None)
    followed = SimpleNamespace(name="followed", _on_changelog_event=lambda event: None)
    stores = {"counts": "store-a", "followed": "store-b"}
    targets: dict[TP, Any] = {
        TP("cl", 0): (counts_table, 0),
        TP("cl", 1): (counts_table, 1),
        TP("fl", 0): (followed, 0),
    }
    writes: dict[Any, Any] = {}
    offsets: dict[Any, Any] = {}
    counts: dict[TP, int] = {TP("cl", 0): 5}
    batch = [
        msg(0, 10, b"a", b"1"),
        msg(0, 11, b"a", b"2"),
        msg(1, 3, b"b", b"1"),
        msg(2, 7, b"x", b"1"),  # a partition not recovered here
        msg(0, 12, None, b"?"),  # no key: skipped, but its offset is reached
        msg(0, 13, b"c", None),  # a tombstone
        msg(0, 0, b"f", b"9", topic="fl"),
        msg(1, 4, b"b", b"2"),
    ]
    events: list[Any] = []
    with caplog.at_level(logging.WARNING):
        staged = apply_messages(batch, targets, writes, offsets, counts, lambda t: stores[t.name], events)
    assert staged == 6
    assert writes == {
        "store-a": {("counts", 0): {b"a": b"2", b"c": None}, ("counts", 1): {b"b": b"2"}},
        "store-b": {("followed", 0): {b"f": b"9"}},
    }
    assert offsets == {"store-a": {TP("cl", 0): 13, TP("cl", 1): 4}, "store-b": {TP("fl", 0): 0}}
    assert counts == {TP("cl", 0): 5 + 4, TP("cl", 1): 2, TP("fl", 0): 1}
    assert [(table.name, m.offset) for table, m in events] == [("followed", 0)]
    assert "table 'counts': skipping a changelog record without a key at cl[0]@12" in caplog.text


def test_a_batch_of_records_without_keys_reaches_their_offsets_and_stages_nothing() -> None:
    table = SimpleNamespace(name="t", _on_changelog_event=None)
    writes: dict[Any, Any] = {}
    offsets: dict[Any, Any] = {}
    counts: dict[TP, int] = {}
    staged = apply_messages(
        [msg(0, 1, None, b"1"), msg(0, 2, b"", b"2")],
        {TP("cl", 0): (table, 0)},
        writes,
        offsets,
        counts,
        lambda t: "s",
    )
    assert (staged, writes, offsets, counts) == (0, {}, {"s": {TP("cl", 0): 2}}, {TP("cl", 0): 2})
