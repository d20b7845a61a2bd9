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

Values carry a CRC-32 (4 bytes, big-endian, before the value) written with
them and verified on every read, so a damaged page is never served as data.
Before the environment is mapped, the file is checked against its meta pages
(magic, page size, last page): a truncated ``data.mdb`` would otherwise end the
process with a bus error on the first read of a missing page. Data up to
:data:`SCAN_LIMIT` bytes is read in full at open and every checksum verified.
A store found damaged (or marked damaged by a failed read, or of an older
layout) is moved aside into ``corrupted/`` inside the data directory, with a
warning naming it, and a fresh one is opened: the tables are then rebuilt from
their changelogs. See docs/tables.md.

Writes, fsync and scans run on the store's own thread (a :class:`StoreThread`);
the trio side awaits them with :meth:`LMDBStore.run`. When a write finds the
map full, the map is doubled (``set_mapsize``) and the transaction retried, up
to ``max_map_size`` (the ``lmdb_max_map_size`` setting).

The data directory belongs to one worker: a ``streamtrio.lock`` file in it is
held with ``flock`` while the store is open, and a second opener (another
process, or the same one) gets a :class:`~streamtrio.StoreError` saying so. LMDB
itself would let several processes share the environment, but two workers
writing the same table partitions would corrupt each other's state.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

from .. import _pidlock as pidlock
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
from .thread import StoreThread

if TYPE_CHECKING:
    from lmdb import _Database

__all__ = [
    "CORRUPTED_DIR",
    "DEFAULT_MAX_DBS",
    "DEFAULT_MAX_MAP_SIZE",
    "ITER_CHUNK",
    "SCAN_LIMIT",
    "LMDBPartition",
    "LMDBStore",
]

log = logging.getLogger(__name__)

#: Named databases an environment can hold: table partitions + 1 (meta).
DEFAULT_MAX_DBS = 2048
#: Items read per read transaction while iterating.
ITER_CHUNK = 1024
LOCK_FILE = "streamtrio.lock"
#: The default growth limit of the map (the ``lmdb_max_map_size`` setting): 1 TiB.
DEFAULT_MAX_MAP_SIZE = 1 << 40
#: Stores holding up to this many bytes are read in full at open, every checksum verified.
SCAN_LIMIT = 256 << 20
#: Where a damaged store is moved, inside the data directory (the last one is kept).
CORRUPTED_DIR = "corrupted"
#: A file whose presence marks the store damaged: the next open moves it aside.
CORRUPTED_MARK = "streamtrio.corrupted"
_DATA_FILE = "data.mdb"
_LMDB_FILES = ("data.mdb", "lock.mdb")

_META = b"meta"
_TABLE_PREFIX = b"t:"
_OFFSET_PREFIX = b"o:"
_VERSION_KEY = b"version"
_LAYOUT_VERSION = b"2"  # 2: values carry a CRC-32
_OFFSET = struct.Struct(">q")
_CRC = struct.Struct(">I")
_CRC_SIZE = _CRC.size
_MDB_MAGIC = 0xBEEFC0DE
#: Corruption LMDB itself reports.
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError)

T = TypeVar("T")


class CorruptedStoreError(StoreError):
    """A stored value failed its checksum, or LMDB reported a damaged page."""


def _seal(value: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(value)) + value


def _unseal(raw: bytes) -> bytes | None:
    """The value, or ``None`` when its checksum does not match."""
    if len(raw) < _CRC_SIZE:
        return None
    value = raw[_CRC_SIZE:]
    if _CRC.unpack_from(raw)[0] != zlib.crc32(value):
        return None
    return value


def check_data_file(path: Path) -> str | None:
    """Why ``path/data.mdb`` cannot be mapped safely, or ``None`` when it can (or is absent).

    Reads the two meta pages: a file shorter than the last page the newest
    valid meta names would raise SIGBUS (a bus error) on first access.
    """
    data = path / _DATA_FILE
    try:
        with data.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64 * 1024 + 160)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read {data}: {exc}"
    if size == 0:
        return None if not (path / "lock.mdb").exists() else f"{data} is empty"
    best: tuple[int, int, int] | None = None  # (txnid, last page, page size)
    page_size = 0
    for index in range(2):
        offset = index * (page_size or 4096)
        if index == 1 and best is not None:
            offset = best[2]
        if len(head) < offset + 152:
            break
        magic, _version = struct.unpack_from("<II", head, offset + 16)
        psize = struct.unpack_from("<I", head, offset + 40)[0]
        last_page, txnid = struct.unpack_from("<QQ", head, offset + 136)
        if magic != _MDB_MAGIC or psize < 512 or psize & (psize - 1) or psize > 64 * 1024:
            continue
        page_size = psize
        if best is None or txnid > best[0]:
            best = (txnid, last_page, psize)
    if best is None:
        return f"{data} has no valid LMDB meta page"
    _, last_page, psize = best
    needed = (last_page + 1) * psize
    if size < needed:
        return f"{data} is truncated: {size} bytes, its last page ends at {needed}"
    return None


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
    """A view of one table partition of an :class:`LMDBStore`.

    Reads run on the calling thread; values are checked against their
    checksum (:class:`CorruptedStoreError` otherwise). :meth:`get` uses the
    store's shared read transaction (see :class:`LMDBStore`), the others a
    short one of their own.
    """

    def __init__(self, store: LMDBStore, table: str, partition: int) -> None:
        super().__init__(table, partition)
        self._store = store
        self._name = _db_name(table, partition)

    @property
    def store(self) -> LMDBStore:
        return self._store

    def _where(self) -> list[tuple[str, int]]:
        return [(self.table, self.partition)]

    def get(self, key: bytes) -> bytes | None:
        store = self._store
        db = store._lookup(self._name)
        if db is None or not 0 < len(key) <= MAX_KEY_SIZE:
            return None
        try:
            with store._resize_lock:
                txn = store._reader
                if txn is None:
                    txn = store._reader = store._env.begin()
                raw = txn.get(key, db=db)
        except lmdb.Error as exc:
            raise store._error(exc, "reading", self._where()) from exc
        return None if raw is None else store._value(raw, self.table, self.partition, key)

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        db = self._store._lookup(self._name)
        found: dict[bytes, bytes] = {}
        if db is None:
            return found
        store = self._store
        try:
            with store._read(db) as txn:
                for key in keys:
                    if 0 < len(key) <= MAX_KEY_SIZE:
                        raw = txn.get(key)
                        if raw is not None:
                            found[key] = raw
        except lmdb.Error as exc:
            raise store._error(exc, "reading", self._where()) from exc
        return {k: store._value(raw, self.table, self.partition, k) for k, raw in found.items()}

    def __len__(self) -> int:
        db = self._store._lookup(self._name)
        if db is None:
            return 0
        try:
            with self._store._read(None) as txn:
                return int(txn.stat(db)["entries"])
        except lmdb.Error as exc:
            raise self._store._error(exc, "reading", self._where()) from exc

    def _iter(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        after: bytes | None = None  # the last key yielded
        store = self._store
        while True:
            db = store._lookup(self._name)
            if db is None:
                return
            chunk: list[tuple[bytes, bytes]] = []
            more = False
            try:
                with store._read(db) as txn, txn.cursor() as cur:
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
                raise store._error(exc, "reading", self._where()) from exc
            for key, raw in chunk:
                yield key, store._value(raw, self.table, self.partition, key)
            if not more:
                return
            after = chunk[-1][0]


class LMDBStore(Store):
    """Table state in an LMDB environment. See the module docstring.

    Args:
        path: the worker's data directory; created if missing.
        map_size: the initial map size in bytes (the ``lmdb_map_size``
            setting). LMDB reserves this much address space, not disk.
        max_map_size: how far the map may grow (the ``lmdb_max_map_size``
            setting): a write that finds the map full doubles it, up to this;
            beyond it the write raises :class:`StoreError` naming the setting.
        sync: fsync on each commit (the ``lmdb_sync`` setting). Without it a
            power loss can lose the last commits (never half of one); a process
            crash loses nothing. :meth:`close` always syncs.
        max_dbs: how many named databases the environment can hold: one per
            table partition this data directory has ever stored and not dropped,
            plus one. LMDB keeps database handles in an array of this size and
            scans it when opening one, so it is a fixed limit rather than
            "unlimited"; 2048 covers, for example, 16 tables of 128 partitions.
            Going over raises :class:`StoreError`.
        scan_limit: stores up to this many bytes are read in full at open to
            verify every checksum (:data:`SCAN_LIMIT`; 0 disables the scan).

    Raises:
        StoreError: the data directory is in use by another worker, or LMDB
            cannot open it.

    Attributes:
        fresh: the store held no data when opened (a new or deleted data
            directory, or a damaged store moved aside).
        moved_aside: where a damaged store was moved at open, or ``None``.

    Thread safety: writes, drops and the close run on the store's own thread
    (callers on other threads wait for them; trio code uses :meth:`run`). Reads
    run on the caller's thread; they are safe while the store thread writes
    (LMDB is MVCC) and wait only while the map is being grown.
    """

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 1 << 30,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        sync: bool = True,
        max_dbs: int = DEFAULT_MAX_DBS,
        scan_limit: int = SCAN_LIMIT,
    ) -> None:
        self.path = Path(path)
        self.map_size = map_size
        self.max_map_size = max(max_map_size, map_size)
        self.fresh = False
        self.moved_aside: Path | None = None
        self.damage: str | None = None
        self._sync = sync
        self._max_dbs = max_dbs
        self._scan_limit = scan_limit
        self._dbs: dict[bytes, _Database] = {}
        self._lock = threading.Lock()  # guards self._dbs and LMDB's dbi table
        # Held by readers for the life of a read transaction and by the map growth:
        # set_mapsize remaps the file, which must not happen under a reader's feet.
        self._resize_lock = threading.Lock()
        # The read transaction that get() shares, begun at the first read after a
        # write: a table's reads between two commits (thousands, every one a miss
        # when the keys are new) then cost one begin instead of one each. Used and
        # ended only under _resize_lock (the environment is opened with MDB_NOTLS,
        # so a read transaction may pass between threads that take turns); every
        # write ends it once committed, so reads see what was written and no old
        # snapshot stays pinned (which would keep LMDB from reusing freed pages).
        self._reader: lmdb.Transaction[bytes] | None = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data dir {self.path}: {exc}") from exc
        self._lock_fd = self._acquire_dir_lock()
        self._thread = StoreThread(f"streamtrio-store {self.path}")
        try:
            self._thread.call(self._open)
        except BaseException:
            self._thread.stop()
            self._release_dir_lock()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<LMDBStore {str(self.path)!r} {state}>"

    # -- lifecycle ------------------------------------------------------------

    def _acquire_dir_lock(self) -> int:
        try:
            return pidlock.hold(self.path / LOCK_FILE)
        except pidlock.LockHeld as held:
            raise StoreError(
                f"data dir {self.path} is in use by another worker (pid {held.holder}); two "
                "workers must never share a data dir: give each its own datadir setting"
            ) from None

    def _release_dir_lock(self) -> None:
        pidlock.release(self._lock_fd)

    def _open(self) -> None:
        """Open the environment, moving a damaged one aside first (on the store thread)."""
        damage = self._find_damage_before_open()
        if damage is None:
            try:
                self._open_env()
            except _DAMAGE as exc:
                damage = f"LMDB reports {exc}"
        if damage is None:
            try:
                damage = self._find_damage_after_open()
            except BaseException:
                self._env.close()
                raise
            if damage is None:
                return
            self._env.close()
            self._dbs.clear()
        self._move_aside(damage)
        try:
            self._open_env()
            damage = self._find_damage_after_open()
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the LMDB store in {self.path}: {exc}") from exc
        if damage is not None:
            self._env.close()
            raise StoreError(f"a new LMDB store in {self.path} is damaged at once: {damage}")

    def _find_damage_before_open(self) -> str | None:
        if (self.path / CORRUPTED_MARK).exists():
            return "a read found it damaged"
        return check_data_file(self.path)

    def _open_env(self) -> None:
        """Open the environment; LMDB's damage errors pass, others become a StoreError."""
        self.fresh = not (self.path / _DATA_FILE).exists()
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=self.map_size,
                max_dbs=self._max_dbs,
                sync=self._sync,
                metasync=self._sync,
                subdir=True,
            )
        except _DAMAGE:
            raise
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the LMDB store in {self.path}: {exc}") from exc
        # A map grown by an earlier run is kept by LMDB: start from what it uses.
        self.map_size = max(self.map_size, self._env.info()["map_size"])

    def _find_damage_after_open(self) -> str | None:
        """Read the layout version, open the table databases and verify them (bounded scan)."""
        try:
            self._meta = self._env.open_db(_META, create=True)
            with self._env.begin(write=True) as txn:
                version = txn.get(_VERSION_KEY, db=self._meta)
                if version is None:
                    txn.put(_VERSION_KEY, _LAYOUT_VERSION, db=self._meta)
                    self.fresh = True
                elif version != _LAYOUT_VERSION:
                    return (
                        f"it has layout version {version.decode(errors='replace')}, this "
                        f"streamtrio writes {_LAYOUT_VERSION.decode()}"
                    )
            # Open every table database now: later lookups then need no LMDB call,
            # and a missing name means "no such partition".
            for name in self._env.dbs():
                if _parse_db_name(name) is not None:
                    self._dbs[name] = self._env.open_db(name, create=False)
            info = self._env.info()
            used = (info["last_pgno"] + 1) * self._env.stat()["psize"]
            if used <= self._scan_limit:
                return self._scan()
        except _DAMAGE as exc:
            return f"LMDB reports {exc}"
        except lmdb.Error as exc:
            raise self._error(exc, "opening", []) from exc
        return None

    def _scan(self) -> str | None:
        """Read every value and check its checksum; the first failure, or ``None``."""
        crc32, unpack = zlib.crc32, _CRC.unpack_from
        # buffers=True: values are views of the map, checked without a copy.
        with self._env.begin(buffers=True) as txn:
            for _raw in txn.cursor(db=self._meta).iternext(keys=False, values=True):
                pass  # reading is the check: a damaged page raises
            for name, db in self._dbs.items():
                with txn.cursor(db=db) as cur:
                    for key, raw in cur:
                        if len(raw) < _CRC_SIZE or unpack(raw)[0] != crc32(raw[_CRC_SIZE:]):
                            table = name.decode(errors="replace")
                            return f"a checksum failed in {table} (key {bytes(key[:32])!r})"
        return None

    def _move_aside(self, damage: str) -> None:
        aside = self.path / CORRUPTED_DIR
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir()
        for name in _LMDB_FILES:
            try:
                (self.path / name).rename(aside / name)
            except FileNotFoundError:
                pass
        (self.path / CORRUPTED_MARK).unlink(missing_ok=True)
        self.moved_aside = aside
        self.damage = damage
        log.warning(
            "the LMDB store in %s is damaged (%s): moved it to %s; the tables are rebuilt "
            "from their changelogs",
            self.path,
            damage,
            aside,
        )

    def _close(self) -> None:
        try:
            self._thread.call(self._close_env)
        finally:
            self._thread.stop()
            self._dbs.clear()
            self._release_dir_lock()

    def _end_reader(self) -> None:
        """End the shared read transaction (after a write; before a resize or close)."""
        with self._resize_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.abort()

    def _close_env(self) -> None:
        self._end_reader()
        try:
            if not self._sync:
                self._env.sync(True)
        finally:
            self._env.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread (see :class:`StoreThread`)."""
        self._check_open()
        return await self._thread.run(fn, *args)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._thread.run(self._close_env)
        finally:
            self._dbs.clear()
            self._thread.stop()  # its queue is empty: returns at once
            self._release_dir_lock()

    # -- helpers --------------------------------------------------------------

    @contextmanager
    def _read(self, db: _Database | None) -> Iterator[lmdb.Transaction[bytes]]:
        with self._resize_lock, self._env.begin(db=db) as txn:
            yield txn

    def _value(self, raw: bytes, table: str, partition: int, key: bytes) -> bytes:
        value = _unseal(raw)
        if value is None:
            raise self._damaged(f"the value of key {key[:32]!r} failed its checksum", [(table, partition)])
        return value

    def _damaged(self, what: str, names: Iterable[tuple[str, int]]) -> CorruptedStoreError:
        """Mark the store damaged (the next open moves it aside) and build the error."""
        try:
            (self.path / CORRUPTED_MARK).touch()
        except OSError:
            log.exception("cannot mark %s damaged", self.path)
        return CorruptedStoreError(
            f"the LMDB store in {self.path} is damaged in {_describe(names)}: {what}; restart "
            "the worker to rebuild it from the changelogs"
        )

    def _lookup(self, name: bytes) -> _Database | None:
        self._check_open()
        return self._dbs.get(name)

    def _create(self, name: bytes) -> _Database:
        with self._lock:
            db = self._dbs.get(name)
            if db is None:
                db = self._dbs[name] = self._env.open_db(name, create=True)
                self._end_reader()  # begun before the database existed
            return db

    def _error(self, exc: lmdb.Error, doing: str, names: Iterable[tuple[str, int]]) -> StoreError:
        where = _describe(names)
        if isinstance(exc, _DAMAGE):
            return self._damaged(f"LMDB reports {exc} while {doing}", names)
        if isinstance(exc, lmdb.MapFullError):
            return StoreError(
                f"LMDB store in {self.path} is full (map size {self.map_size} bytes, the "
                f"lmdb_max_map_size setting is {self.max_map_size}) while {doing} {where}: "
                "raise the lmdb_max_map_size setting (or free disk) and restart; the tables "
                "are recovered from their changelogs"
            )
        if isinstance(exc, lmdb.DbsFullError):
            return StoreError(
                f"LMDB store in {self.path} cannot hold another table partition while "
                f"{doing} {where}: it is limited to max_dbs named databases"
            )
        return StoreError(f"LMDB store in {self.path} failed while {doing} {where}: {exc}")

    def _grow(self) -> bool:
        """Double the map (on the store thread, no write transaction open); whether it grew."""
        if self.map_size >= self.max_map_size:
            return False
        new = min(self.map_size * 2, self.max_map_size)
        with self._resize_lock:
            if self._reader is not None:
                self._reader.abort()
                self._reader = None
            self._env.set_mapsize(new)
        log.info("LMDB store in %s: map grown from %d to %d bytes", self.path, self.map_size, new)
        self.map_size = new
        return True

    # -- the Store interface -----------------------------------------------------

    def partition(self, table: str, partition: int) -> LMDBPartition:
        self._check_open()
        check_name(table, partition)
        name = _db_name(table, partition)
        if name not in self._dbs:
            try:
                self._thread.call(self._create_growing, name)
            except lmdb.Error as exc:
                raise self._error(exc, "creating", [(table, partition)]) from exc
        return LMDBPartition(self, table, partition)

    def _create_growing(self, name: bytes) -> _Database:
        while True:
            try:
                return self._create(name)
            except lmdb.MapFullError:
                if not self._grow():
                    raise

    def write_batch(self, writes: Writes, offsets: Mapping[TP, int]) -> None:
        self._check_open()
        self._thread.call(self._write_batch, writes, offsets)

    def _write_batch(self, writes: Writes, offsets: Mapping[TP, int]) -> None:
        self._check_open()
        check_offsets(offsets)
        for table, partition in writes:
            check_name(table, partition)
        try:
            # Opening a database inside the batch transaction would leave a dead
            # handle if the batch aborts, so new ones are created (empty) first.
            dbs = [(name, self._create_growing(_db_name(*name)), data) for name, data in writes.items()]
        except lmdb.Error as exc:
            raise self._error(exc, "creating", list(writes)) from exc
        where: tuple[str, int] = ("", 0)
        key: object = b""
        value: object = None
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for name, db, data in dbs:
                        where = name
                        for key, value in data.items():
                            if value is None:
                                txn.delete(key, db=db)
                            else:
                                txn.put(key, _seal(value), db=db)
                    for tp, offset in offsets.items():
                        txn.put(_offset_key(tp), _OFFSET.pack(offset), db=self._meta)
                self._end_reader()
                return
            except lmdb.MapFullError as exc:
                # The transaction was aborted: grow the map and write it all again.
                if not self._grow():
                    raise self._error(exc, "writing", list(writes)) from exc
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
            with self._read(self._meta) as txn:
                raw = txn.get(_offset_key(tp))
        except lmdb.Error as exc:
            raise self._error(exc, f"reading the offset of {tp} in", []) from exc
        return None if raw is None else int(_OFFSET.unpack(raw)[0])

    def drop_partition(self, table: str, partition: int, *, changelog: TP | None) -> None:
        self._check_open()
        self._thread.call(self._drop_partition, table, partition, changelog)

    def _drop_partition(self, table: str, partition: int, changelog: TP | None) -> None:
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
            finally:
                self._end_reader()
            # The handle dies with the committed drop; the name is free for reuse.
            self._dbs.pop(name, None)

    def partitions(self) -> list[tuple[str, int]]:
        self._check_open()
        with self._lock:
            dbs = list(self._dbs.items())
        found: list[tuple[str, int]] = []
        try:
            with self._read(None) as txn:
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
            with self._read(None) as txn:
                counts = [txn.stat(db)["entries"] for db in dbs]
                info = self._env.info()
                page_size = self._env.stat()["psize"]
        except lmdb.Error as exc:
            raise self._error(exc, "measuring", []) from exc
        try:
            size_on_disk = (self.path / _DATA_FILE).stat().st_size
        except OSError:
            size_on_disk = 0
        return StoreStatistics(
            partitions=sum(1 for n in counts if n),
            entries=sum(counts),
            bytes_used=(info["last_pgno"] + 1) * page_size,
            map_size=info["map_size"],
            size_on_disk=size_on_disk,
        )
