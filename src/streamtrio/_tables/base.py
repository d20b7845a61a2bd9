"""The state-store interface under changelog-backed tables (imports no transport).

A :class:`Store` holds the committed state of every table partition a worker
owns, as bytes, plus the changelog offsets that state corresponds to. The table
layer above encodes keys and values, keeps writes in an in-memory dirty map and
hands them to :meth:`Store.write_batch` at each commit together with the
changelog offsets they reach. That one call is atomic, so after a crash the
stored data and the stored offsets are never out of step: recovery resumes the
changelog at :meth:`Store.persisted_offset` + 1.

The API is synchronous, plus :meth:`Store.run` for trio code: it runs a
blocking call (a write, a scan) where the store runs its blocking work, on
the LMDB store's own thread, so the trio thread never waits for a commit or
an fsync. Reads of single keys are fast and may be called inline.

Keys must be 1 to :data:`MAX_KEY_SIZE` bytes (LMDB's limit, enforced by every
store so that tests on ``memory://`` catch what would fail on ``lmdb://``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import trio

from .._exceptions import ClosedError, ConfigurationError, StoreError
from .._types import TP

__all__ = [
    "MAX_KEY_SIZE",
    "Store",
    "StorePartition",
    "StoreStatistics",
    "open_store",
]

#: The longest key a store accepts, in bytes (LMDB's compiled-in limit).
MAX_KEY_SIZE = 511

T = TypeVar("T")

#: ``write_batch`` writes: ``{(table, partition): {key: value or None to delete}}``.
Writes = Mapping[tuple[str, int], Mapping[bytes, bytes | None]]


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of a store.

    Attributes:
        partitions: table partitions holding at least one key.
        entries: keys stored, over every table partition.
        bytes_used: bytes the data occupies (LMDB: pages in use times page size;
            memory: the sum of key and value lengths).
        map_size: the LMDB map size (the most the store can hold), or ``None``
            when the store has no fixed limit (memory).
        size_on_disk: bytes of the data file (0 for memory).
    """

    partitions: int
    entries: int
    bytes_used: int
    map_size: int | None
    size_on_disk: int


class StorePartition(ABC):
    """A read view of the committed data of one table partition.

    Everything here reads what the store has committed; writes made through
    :meth:`write` (or :meth:`Store.write_batch`) are visible as soon as that call
    returns. Iteration is in key order (bytewise). An iterator reads in chunks and
    does not pin a snapshot: a commit made while iterating may or may not be
    seen by the keys not yet reached, but each key is seen at most once.

    Raises:
        ClosedError: on any use after the store was closed.
    """

    def __init__(self, table: str, partition: int) -> None:
        self.table = table
        self.partition = partition

    @property
    @abstractmethod
    def store(self) -> Store:
        """The store this partition belongs to."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or ``None``."""

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The stored values of ``keys`` (missing ones left out), read in one transaction."""
        found = {}
        for key in keys:
            value = self.get(key)
            if value is not None:
                found[key] = value
        return found

    @abstractmethod
    def __len__(self) -> int:
        """The number of keys stored."""

    @abstractmethod
    def _iter(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Items with ``start <= key < end`` in key order (``None``: unbounded)."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) pair, in key order."""
        return self._iter(None, None)

    def chunk(self, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, value) pairs with keys after ``after`` (``None``: from
        the first), in key order; blocking: call it through :meth:`Store.run`."""
        pairs = self._iter(after, None)
        found: list[tuple[bytes, bytes]] = []
        for key, value in pairs:
            if key == after:
                continue
            found.append((key, value))
            if len(found) == limit:
                break
        return found

    def keys(self) -> Iterator[bytes]:
        """Every key, in key order."""
        return (key for key, _ in self._iter(None, None))

    def values(self) -> Iterator[bytes]:
        """Every value, in key order."""
        return (value for _, value in self._iter(None, None))

    def range(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The (key, value) pairs with ``start <= key < end``, in key order.

        Useful for windowed tables, whose keys sort by (key, window start).
        """
        return self._iter(start, end)

    def write(self, writes: Mapping[bytes, bytes | None]) -> None:
        """Apply ``writes`` (``None`` deletes) atomically, recording no offset.

        A shortcut for ``store.write_batch({(table, partition): writes}, {})``.
        """
        self.store.write_batch({(self.table, self.partition): writes}, {})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} table={self.table!r} partition={self.partition}>"


class Store(ABC):
    """The state of every table partition of one worker, and its changelog offsets.

    Use it as a context manager, or call :meth:`close`. Any use after close
    raises :class:`~streamtrio.ClosedError`. Backend failures raise
    :class:`~streamtrio.StoreError` naming the table partition involved.
    """

    _closed: bool = False
    #: The store held no data when opened (a new, deleted or damaged data dir).
    fresh: bool = False
    #: Where a damaged store was moved aside at open, if it was.
    moved_aside: Path | None = None

    @abstractmethod
    def partition(self, table: str, partition: int) -> StorePartition:
        """The view of one table partition, created empty if it does not exist."""

    @abstractmethod
    def write_batch(self, writes: Writes, offsets: Mapping[TP, int]) -> None:
        """Apply the writes of many table partitions and record offsets, atomically.

        After a crash either every write and every offset of the call is stored,
        or none of it is. A call that raises has written nothing.

        Args:
            writes: ``{(table, partition): {key: value}}``; a ``None`` value
                deletes the key (deleting a missing key is not an error).
            offsets: ``{changelog TP: offset}``, the offset of the last changelog
                record whose effect ``writes`` contains.

        Raises:
            TypeError: a key or value is not bytes (values may be ``None``).
            StoreError: a key is empty or longer than :data:`MAX_KEY_SIZE`, the
                store is full, or the backend failed.
            ClosedError: the store is closed.
        """

    @abstractmethod
    def persisted_offset(self, tp: TP) -> int | None:
        """The last changelog offset recorded for ``tp``, or ``None`` if none is.

        Recovery resumes reading the changelog at this offset + 1.
        """

    @abstractmethod
    def drop_partition(self, table: str, partition: int, *, changelog: TP | None) -> None:
        """Delete a table partition's data and its changelog offset, atomically.

        The store does not know which changelog topic feeds which table, so the
        caller names it: ``changelog`` is the changelog partition whose offset
        must go with the data (``None`` for a table without a changelog). It is
        required on purpose: keeping the offset while dropping the data would make
        a later recovery skip the changelog records the data came from.
        Dropping a partition that does not exist is not an error.
        """

    @abstractmethod
    def partitions(self) -> list[tuple[str, int]]:
        """The (table, partition) pairs holding at least one key, sorted."""

    @abstractmethod
    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's size."""

    @abstractmethod
    def _close(self) -> None:
        """Release the backend; called once by :meth:`close`."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the blocking call ``fn(*args)`` (a method of this store) off the trio thread.

        The LMDB store runs it on its own thread; the memory store inline (its
        calls do not block). Cancellation: the call is never abandoned; a
        cancelled caller waits for it to finish, then gets ``Cancelled``.

        Raises:
            ClosedError: the store is closed.
        """
        self._check_open()
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def aclose(self) -> None:
        """:meth:`close`, with the closing (a final fsync) off the trio thread."""
        await trio.lowlevel.checkpoint()
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Flush and release the store. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_name(table: str, partition: int) -> None:
    """Reject table names and partition numbers that no store can hold."""
    if not isinstance(table, str) or not table:
        raise ValueError(f"table name must be a non-empty str, got {table!r}")
    if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
        raise ValueError(f"partition must be an int >= 0, got {partition!r}")


def check_offsets(offsets: Mapping[TP, int]) -> None:
    """Reject offsets that are not ints >= 0, before anything is written."""
    for tp, offset in offsets.items():
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"offset for {tp} must be an int >= 0, got {offset!r}")


def key_error(table: str, partition: int, key: bytes) -> StoreError:
    """The error for a key that is empty or longer than :data:`MAX_KEY_SIZE`."""
    return StoreError(
        f"table {table!r} partition {partition}: a key must be 1 to {MAX_KEY_SIZE} bytes, "
        f"got {len(key)} bytes ({bytes(key[:32])!r}...)"
    )


def type_error(table: str, partition: int, key: object, value: object) -> TypeError:
    """The error for a key or value of the wrong type."""
    return TypeError(
        f"table {table!r} partition {partition}: keys must be bytes and values bytes or "
        f"None, got key {type(key).__name__} {key!r:.60} and value {type(value).__name__}"
    )


def open_store(url: str, *, path: Path, map_size: int, sync: bool, max_map_size: int | None = None) -> Store:
    """Open the store named by a store URL (the ``store`` setting).

    Args:
        url: ``lmdb://`` (the state lives in ``path``) or ``memory://`` (nothing
            survives the process).
        path: the worker's data directory (the ``datadir`` setting); created if
            missing. Ignored by ``memory://``.
        map_size: the initial LMDB map size in bytes (the ``lmdb_map_size`` setting).
        max_map_size: how far the LMDB map may grow (the ``lmdb_max_map_size``
            setting); ``None``: the LMDB store's default.
        sync: fsync each commit (the ``lmdb_sync`` setting).

    Raises:
        ConfigurationError: the URL's scheme is not ``lmdb`` or ``memory``.
        StoreError: the LMDB environment cannot be opened, or another worker
            has the data directory open.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("lmdb", "memory"):
        raise ConfigurationError(f"store: unknown store URL {url!r}; use 'lmdb://' or 'memory://'")
    if rest:
        raise ConfigurationError(
            f"store: {url!r} must be just '{scheme}://'; the data directory comes from the datadir setting"
        )
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    from .lmdb import DEFAULT_MAX_MAP_SIZE, LMDBStore

    return LMDBStore(
        path,
        map_size=map_size,
        sync=sync,
        max_map_size=DEFAULT_MAX_MAP_SIZE if max_map_size is None else max_map_size,
    )
