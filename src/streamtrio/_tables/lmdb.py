"""The ``lmdb://`` store: one LMDB environment per worker data directory.

Layout inside the environment:

- one named database per table partition, ``t:{table}:{partition}``;
- a ``meta`` database: the persisted changelog offset of each changelog
  partition (key ``o:{topic}:{partition}``, value a big-endian int64) and the
  layout version.

Every :meth:`LMDBStore.write_batch` is one LMDB write transaction, so data and
offsets are committed together or not at all. Reads use short read
transactions; iterators read in chunks of :data:`ITER_CHUNK` items and never
hold a transaction between chunks (a long-lived read transaction would stop
LMDB from reusing pages and make the file grow).

The data directory belongs to one worker: a ``streamtrio.lock`` file in it is
held with ``flock`` while the store is open, and a second opener (another
process, or the same one) gets a :class:`~streamtrio.StoreError` saying so. LMDB
itself would let several processes share the environment, but two workers
writing the same table partitions would corrupt each other's state.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb

from .._exceptions import StoreError
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

if TYPE_CHECKING:
    from lmdb import _Database

__all__ = ["DEFAULT_MAX_DBS", "ITER_CHUNK", "LMDBPartition", "LMDBStore"]

log = logging.getLogger(__name__)

#: Named databases an environment can hold: table partitions + 1 (meta).
DEFAULT_MAX_DBS = 2048
#: Items read per read transaction while iterating.
ITER_CHUNK = 1024
LOCK_FILE = "streamtrio.lock"

_META = b"meta"
_TABLE_PREFIX = b"t:"
_OFFSET_PREFIX = b"o:"
_VERSION_KEY = b"version"
_LAYOUT_VERSION = b"1"
_OFFSET = struct.Struct(">q")


def _db_name(table: str, partition: int) -> bytes:
    return b"%s%s:%d" % (_TABLE_PREFIX, table.encode(), partition)


def _parse_db_name(name: bytes) -> tuple[str, int] | None:
    if not name.startswith(_TABLE_PREFIX):
        return None
    table, _, partition = name[len(_TABLE_PREFIX) :].rpartition(b":")
    try:
        return table.decode(), int(partition)
    except ValueError:
        return None


def _offset_key(tp: TP) -> bytes:
    return b"%s%s:%d" % (_OFFSET_PREFIX, tp.topic.encode(), tp.partition)


def _describe(names: Iterable[tuple[str, int]]) -> str:
    names = list(names)
    text = ", ".join(f"{table!r}[{partition}]" for table, partition in names[:5])
    if len(names) > 5:
        text += f" and {len(names) - 5} more"
    return f"table partition(s) {text}" if names else "the store"


class LMDBPartition(StorePartition):
    """A view of one table partition of an :class:`LMDBStore`."""

    def __init__(self, store: LMDBStore, table: str, partition: int) -> None:
        super().__init__(table, partition)
        self._store = store
        self._name = _db_name(table, partition)

    @property
    def store(self) -> LMDBStore:
        return self._store

    def get(self, key: bytes) -> bytes | None:
        db = self._store._lookup(self._name)
        if db is None or not 0 < len(key) <= MAX_KEY_SIZE:
            return None
        try:
            with self._store._env.begin(db=db) as txn:
                return txn.get(key)
        except lmdb.Error as exc:
            raise self._store._error(exc, "reading", [(self.table, self.partition)]) from exc

    def __len__(self) -> int:
        db = self._store._lookup(self._name)
        if db is None:
            return 0
        try:
            with self._store._env.begin() as txn:
                return txn.stat(db)["entries"]
        except lmdb.Error as exc:
            raise self._store._error(exc, "reading", [(self.table, self.partition)]) from exc

    def _iter(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        after: bytes | None = None  # the last key yielded
        while True:
            db = self._store._lookup(self._name)
            if db is None:
                return
            chunk: list[tuple[bytes, bytes]] = []
            more = False
            try:
                with self._store._env.begin(db=db) as txn, txn.cursor() as cur:
                    if after is not None:
                        found = cur.set_range(after)
                        if found and cur.key() == after:
                            found = cur.next()
                    elif start:
                        found = cur.set_range(start)
                    else:
                        found = cur.first()
                    while found:
                        key = cur.key()
                        if end is not None and key >= end:
                            break
                        if len(chunk) == ITER_CHUNK:
                            more = True
                            break
                        chunk.append((key, cur.value()))
                        found = cur.next()
            except lmdb.Error as exc:
                raise self._store._error(exc, "reading", [(self.table, self.partition)]) from exc
            yield from chunk
            if not more:
                return
            after = chunk[-1][0]


class LMDBStore(Store):
    """Table state in an LMDB environment. See the module docstring.

    Args:
        path: the worker's data directory; created if missing.
        map_size: the most the environment may hold, in bytes (the
            ``lmdb_map_size`` setting). LMDB reserves this much address space,
            not disk; a write that would exceed it raises :class:`StoreError`.
        sync: fsync on each commit (the ``lmdb_sync`` setting). Without it a
            power loss can lose the last commits (never half of one); a process
            crash loses nothing. :meth:`close` always syncs.
        max_dbs: how many named databases the environment can hold: one per
            table partition this data directory has ever stored and not dropped,
            plus one. LMDB keeps database handles in an array of this size and
            scans it when opening one, so it is a fixed limit rather than
            "unlimited"; 2048 covers, for example, 16 tables of 128 partitions.
            Going over raises :class:`StoreError`.

    Raises:
        StoreError: the data directory is in use by another worker, or LMDB
            cannot open it.

    Thread safety: call it from one thread at a time (any thread). Reads in one
    thread while another thread commits are also safe (LMDB is MVCC); closing
    while another thread uses the store is not.
    """

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 1 << 30,
        sync: bool = True,
        max_dbs: int = DEFAULT_MAX_DBS,
    ) -> None:
        self.path = Path(path)
        self.map_size = map_size
        self._sync = sync
        self._dbs: dict[bytes, _Database] = {}
        self._lock = threading.Lock()  # guards self._dbs and LMDB's dbi table
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data dir {self.path}: {exc}") from exc
        self._lock_fd = self._acquire_dir_lock()
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=max_dbs,
                sync=sync,
                metasync=sync,
                subdir=True,
            )
        except lmdb.Error as exc:
            self._release_dir_lock()
            raise StoreError(f"cannot open the LMDB store in {self.path}: {exc}") from exc
        try:
            self._open_existing()
        except BaseException:
            self._env.close()
            self._release_dir_lock()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<LMDBStore {str(self.path)!r} {state}>"

    # -- lifecycle ------------------------------------------------------------

    def _acquire_dir_lock(self) -> int:
        lock_path = self.path / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"data dir {self.path} is in use by another worker (pid {holder}); two "
                "workers must never share a data dir: give each its own datadir setting"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release_dir_lock(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    def _open_existing(self) -> None:
        try:
            self._meta = self._env.open_db(_META, create=True)
            with self._env.begin(write=True) as txn:
                version = txn.get(_VERSION_KEY, db=self._meta)
                if version is None:
                    txn.put(_VERSION_KEY, _LAYOUT_VERSION, db=self._meta)
                elif version != _LAYOUT_VERSION:
                    raise StoreError(
                        f"the LMDB store in {self.path} has layout version "
                        f"{version.decode(errors='replace')}, this streamtrio reads "
                        f"{_LAYOUT_VERSION.decode()}"
                    )
            # Open every table database now: later lookups then need no LMDB call,
            # and a missing name means "no such partition".
            for name in self._env.dbs():
                if _parse_db_name(name) is not None:
                    self._dbs[name] = self._env.open_db(name, create=False)
        except lmdb.Error as exc:
            raise self._error(exc, "opening", []) from exc

    def _close(self) -> None:
        try:
            if not self._sync:
                self._env.sync(True)
        finally:
            self._env.close()
            self._dbs.clear()
            self._release_dir_lock()

    # -- helpers --------------------------------------------------------------

    def _lookup(self, name: bytes) -> _Database | None:
        self._check_open()
        return self._dbs.get(name)

    def _create(self, name: bytes) -> _Database:
        with self._lock:
            db = self._dbs.get(name)
            if db is None:
                db = self._dbs[name] = self._env.open_db(name, create=True)
            return db

    def _error(self, exc: lmdb.Error, doing: str, names: Iterable[tuple[str, int]]) -> StoreError:
        where = _describe(names)
        if isinstance(exc, lmdb.MapFullError):
            return StoreError(
                f"LMDB store in {self.path} is full (map size {self.map_size} bytes) while "
                f"{doing} {where}: raise the lmdb_map_size setting"
            )
        if isinstance(exc, lmdb.DbsFullError):
            return StoreError(
                f"LMDB store in {self.path} cannot hold another table partition while "
                f"{doing} {where}: it is limited to max_dbs named databases"
            )
        return StoreError(f"LMDB store in {self.path} failed while {doing} {where}: {exc}")

    # -- the Store interface -----------------------------------------------------

    def partition(self, table: str, partition: int) -> LMDBPartition:
        self._check_open()
        check_name(table, partition)
        name = _db_name(table, partition)
        try:
            self._create(name)
        except lmdb.Error as exc:
            raise self._error(exc, "creating", [(table, partition)]) from exc
        return LMDBPartition(self, table, partition)

    def write_batch(self, writes: Writes, offsets: Mapping[TP, int]) -> None:
        self._check_open()
        check_offsets(offsets)
        for table, partition in writes:
            check_name(table, partition)
        try:
            # Opening a database inside the batch transaction would leave a dead
            # handle if the batch aborts, so new ones are created (empty) first.
            dbs = [(name, self._create(_db_name(*name)), data) for name, data in writes.items()]
        except lmdb.Error as exc:
            raise self._error(exc, "creating", list(writes)) from exc
        where: tuple[str, int] = ("", 0)
        key: object = b""
        value: object = None
        try:
            with self._env.begin(write=True) as txn:
                for name, db, data in dbs:
                    where = name
                    for key, value in data.items():
                        if value is None:
                            txn.delete(key, db=db)
                        else:
                            txn.put(key, value, db=db)
                for tp, offset in offsets.items():
                    txn.put(_offset_key(tp), _OFFSET.pack(offset), db=self._meta)
        except TypeError as exc:
            raise type_error(*where, key, value) from exc
        except lmdb.BadValsizeError as exc:
            if isinstance(key, bytes | bytearray | memoryview) and not (0 < len(key) <= MAX_KEY_SIZE):
                raise key_error(*where, bytes(key)) from exc
            raise self._error(exc, "writing", list(writes)) from exc
        except lmdb.Error as exc:
            raise self._error(exc, "writing", list(writes)) from exc

    def persisted_offset(self, tp: TP) -> int | None:
        self._check_open()
        try:
            with self._env.begin(db=self._meta) as txn:
                raw = txn.get(_offset_key(tp))
        except lmdb.Error as exc:
            raise self._error(exc, f"reading the offset of {tp} in", []) from exc
        return None if raw is None else int(_OFFSET.unpack(raw)[0])

    def drop_partition(self, table: str, partition: int, *, changelog: TP | None) -> None:
        self._check_open()
        name = _db_name(table, partition)
        with self._lock:
            db = self._dbs.get(name)
            try:
                with self._env.begin(write=True) as txn:
                    if db is not None:
                        txn.drop(db, delete=True)
                    if changelog is not None:
                        txn.delete(_offset_key(changelog), db=self._meta)
            except lmdb.Error as exc:
                raise self._error(exc, "dropping", [(table, partition)]) from exc
            # The handle dies with the committed drop; the name is free for reuse.
            self._dbs.pop(name, None)

    def partitions(self) -> list[tuple[str, int]]:
        self._check_open()
        with self._lock:
            dbs = list(self._dbs.items())
        found: list[tuple[str, int]] = []
        try:
            with self._env.begin() as txn:
                for name, db in dbs:
                    parsed = _parse_db_name(name)
                    if parsed is not None and txn.stat(db)["entries"]:
                        found.append(parsed)
        except lmdb.Error as exc:
            raise self._error(exc, "listing", []) from exc
        return sorted(found)

    def statistics(self) -> StoreStatistics:
        self._check_open()
        with self._lock:
            dbs = list(self._dbs.values())
        try:
            with self._env.begin() as txn:
                counts = [txn.stat(db)["entries"] for db in dbs]
            info = self._env.info()
            page_size = self._env.stat()["psize"]
        except lmdb.Error as exc:
            raise self._error(exc, "measuring", []) from exc
        try:
            size_on_disk = (self.path / "data.mdb").stat().st_size
        except OSError:
            size_on_disk = 0
        return StoreStatistics(
            partitions=sum(1 for n in counts if n),
            entries=sum(counts),
            bytes_used=(info["last_pgno"] + 1) * page_size,
            map_size=info["map_size"],
            size_on_disk=size_on_disk,
        )
