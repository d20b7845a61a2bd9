"""The ``memory://`` store: the LMDB store's semantics in dicts, for tests and demos.

Nothing survives the process. It enforces the same rules as the LMDB store
(bytes only, key length limit, atomic batches, ``ClosedError`` after close) so
that code tested against it behaves the same on ``lmdb://``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping

from .._types import TP
from .base import (
    MAX_KEY_SIZE,
    Store,
    StorePartition,
    StoreStatistics,
    Writes,
    check_name,
    check_offsets,
    key_error,
    type_error,
)

__all__ = ["MemoryPartition", "MemoryStore"]

_BYTES_LIKE = (bytes, bytearray, memoryview)


class _Data:
    """One table partition: a dict plus its keys sorted on demand."""

    __slots__ = ("sorted_keys", "values")

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.sorted_keys: list[bytes] | None = None

    def keys_in_order(self) -> list[bytes]:
        if self.sorted_keys is None:
            self.sorted_keys = sorted(self.values)
        return self.sorted_keys


class MemoryPartition(StorePartition):
    """A view of one table partition of a :class:`MemoryStore`."""

    def __init__(self, store: MemoryStore, table: str, partition: int) -> None:
        super().__init__(table, partition)
        self._store = store

    @property
    def store(self) -> MemoryStore:
        return self._store

    def _data(self) -> _Data | None:
        self._store._check_open()
        return self._store._data.get((self.table, self.partition))

    def get(self, key: bytes) -> bytes | None:
        data = self._data()
        return None if data is None else data.values.get(key)

    def __len__(self) -> int:
        data = self._data()
        return 0 if data is None else len(data.values)

    def _iter(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        data = self._data()
        if data is None:
            return
        # A copy of the key slice, so that a commit during iteration cannot break
        # it; values are read as they are reached, like the LMDB store's chunks.
        keys = data.keys_in_order()
        lo = 0 if start is None else bisect_left(keys, start)
        hi = len(keys) if end is None else bisect_left(keys, end)
        for key in keys[lo:hi]:
            data = self._data()
            if data is None:
                return
            value = data.values.get(key)
            if value is not None:
                yield key, value


class MemoryStore(Store):
    """Table state in dicts. See the module docstring."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int], _Data] = {}
        self._offsets: dict[TP, int] = {}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MemoryStore {state}>"

    def partition(self, table: str, partition: int) -> MemoryPartition:
        self._check_open()
        check_name(table, partition)
        self._data.setdefault((table, partition), _Data())
        return MemoryPartition(self, table, partition)

    def write_batch(self, writes: Writes, offsets: Mapping[TP, int]) -> None:
        self._check_open()
        check_offsets(offsets)
        # Validate everything before touching anything: that is what makes the
        # batch atomic here.
        staged: list[tuple[tuple[str, int], list[tuple[bytes, bytes | None]]]] = []
        for name, data in writes.items():
            check_name(*name)
            ops: list[tuple[bytes, bytes | None]] = []
            for key, value in data.items():
                if not isinstance(key, _BYTES_LIKE) or not (value is None or isinstance(value, _BYTES_LIKE)):
                    raise type_error(name[0], name[1], key, value)
                if not 0 < len(key) <= MAX_KEY_SIZE:
                    raise key_error(name[0], name[1], key)
                ops.append((bytes(key), None if value is None else bytes(value)))
            staged.append((name, ops))
        for name, ops in staged:
            part = self._data.setdefault(name, _Data())
            for key, value in ops:
                if value is None:
                    if part.values.pop(key, None) is not None:
                        part.sorted_keys = None
                else:
                    if key not in part.values:
                        part.sorted_keys = None
                    part.values[key] = value
        self._offsets.update(offsets)

    def persisted_offset(self, tp: TP) -> int | None:
        self._check_open()
        return self._offsets.get(tp)

    def drop_partition(self, table: str, partition: int, *, changelog: TP | None) -> None:
        self._check_open()
        self._data.pop((table, partition), None)
        if changelog is not None:
            self._offsets.pop(changelog, None)

    def partitions(self) -> list[tuple[str, int]]:
        self._check_open()
        return sorted(name for name, data in self._data.items() if data.values)

    def statistics(self) -> StoreStatistics:
        self._check_open()
        parts = [data.values for data in self._data.values()]
        return StoreStatistics(
            partitions=sum(1 for values in parts if values),
            entries=sum(len(values) for values in parts),
            bytes_used=sum(len(k) + len(v) for values in parts for k, v in values.items()),
            map_size=None,
            size_on_disk=0,
        )

    def _close(self) -> None:
        self._data.clear()
        self._offsets.clear()
