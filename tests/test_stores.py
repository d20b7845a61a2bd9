"""The state stores under tables: lmdb:// and memory:// behave the same."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from streamtrio._exceptions import ClosedError, ConfigurationError, StoreError
from streamtrio._tables import lmdb as lmdb_store
from streamtrio._tables.base import MAX_KEY_SIZE, Store, StoreStatistics, open_store
from streamtrio._tables.lmdb import LMDBStore
from streamtrio._tables.memory import MemoryStore
from streamtrio._types import TP

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["lmdb", "memory"])
def open_test_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores of one kind on one data dir; closes them at the end."""
    opened: list[Store] = []

    def factory() -> Store:
        store = open_store(f"{request.param}://", path=tmp_path / "data", map_size=64 << 20, sync=False)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_test_store: StoreFactory) -> Store:
    return open_test_store()


def _lmdb(tmp_path: Path, *, map_size: int = 64 << 20, max_map_size: int | None = None) -> LMDBStore:
    store = open_store(
        "lmdb://", path=tmp_path / "data", map_size=map_size, sync=False, max_map_size=max_map_size
    )
    assert isinstance(store, LMDBStore)
    return store


# -- round trips -------------------------------------------------------------------


def test_round_trip(store: Store) -> None:
    part = store.partition("totals", 3)
    assert part.get(b"a") is None
    assert len(part) == 0
    part.write({b"b": b"2", b"a": b"1", b"c": b"3"})
    assert part.get(b"a") == b"1"
    assert b"b" in part
    assert b"zz" not in part
    assert len(part) == 3
    assert list(part.keys()) == [b"a", b"b", b"c"]
    assert list(part.values()) == [b"1", b"2", b"3"]
    assert list(part.items()) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    # Another table and another partition of the same table are separate.
    assert store.partition("totals", 4).get(b"a") is None
    assert store.partition("other", 3).get(b"a") is None
    part.write({b"a": b"overwritten"})
    assert part.get(b"a") == b"overwritten"


def test_keys_sort_bytewise(store: Store) -> None:
    part = store.partition("t", 0)
    keys = [b"\xff", b"\x00\x01", b"a", b"B", b"ab", b"\x00"]
    part.write({k: k for k in keys})
    assert list(part.keys()) == sorted(keys)


def test_deletes(store: Store) -> None:
    part = store.partition("t", 0)
    part.write({b"a": b"1", b"b": b"2"})
    part.write({b"a": None, b"never-there": None})
    assert part.get(b"a") is None
    assert b"a" not in part
    assert list(part.items()) == [(b"b", b"2")]
    assert len(part) == 1


def test_iteration_spans_many_chunks(store: Store) -> None:
    n = lmdb_store.ITER_CHUNK * 2 + 7
    part = store.partition("t", 0)
    part.write({b"%06d" % i: b"v%d" % i for i in range(n)})
    keys = list(part.keys())
    assert keys == [b"%06d" % i for i in range(n)]
    assert list(part.range(b"001000", b"002050"))[-1] == (b"002049", b"v2049")
    assert len(list(part.range(b"001000", b"002050"))) == 1050


def test_iteration_does_not_hold_a_read_transaction(tmp_path: Path) -> None:
    # A paused iterator must not pin an LMDB snapshot: writes made meanwhile
    # are seen by the chunks not read yet.
    store = _lmdb(tmp_path)
    with store:
        part = store.partition("t", 0)
        n = lmdb_store.ITER_CHUNK * 2
        part.write({b"%06d" % i: b"old" for i in range(n)})
        it = part.items()
        first = next(it)
        part.write({b"%06d" % (n - 1): b"new"})
        rest = list(it)
        assert first == (b"000000", b"old")
        assert rest[-1] == (b"%06d" % (n - 1), b"new")
        assert len(rest) == n - 1


def test_lmdb_reads_share_a_snapshot_only_until_the_next_write(tmp_path: Path) -> None:
    # get() reuses one read transaction between writes: every write, a new
    # database and the growth of the map end it, so reads see what was written.
    with _lmdb(tmp_path, map_size=256 * 1024, max_map_size=64 << 20) as store:
        part = store.partition("t", 0)
        store.write_batch({("t", 0): {b"a": b"1"}}, {})
        assert part.get(b"a") == b"1"
        assert part.get(b"b") is None
        store.write_batch({("t", 0): {b"b": b"2", b"a": None}}, {})
        assert part.get(b"b") == b"2"
        assert part.get(b"a") is None
        part.write({b"c": b"3"})
        assert part.get(b"c") == b"3"
        # a database created after the read transaction began
        assert store.partition("new", 0).get(b"x") is None
        store.write_batch({("new", 0): {b"x": b"1"}}, {})
        assert store.partition("new", 0).get(b"x") == b"1"
        # the map grows (remapped) while a read transaction was open
        big = {b"%08d" % i: b"x" * 200 for i in range(5000)}
        store.write_batch({("t", 1): big}, {})
        assert store.statistics().map_size > 256 * 1024  # type: ignore[operator]
        assert store.partition("t", 1).get(b"00004999") == b"x" * 200
        assert part.get(b"b") == b"2"
        store.drop_partition("t", 0, changelog=None)
        assert part.get(b"b") is None


def test_lmdb_reads_between_rewrites_pin_no_old_snapshot(tmp_path: Path) -> None:
    # A read transaction left open would keep LMDB from reusing the pages that
    # every rewrite frees: the file would grow by the data's size per rewrite.
    with _lmdb(tmp_path, map_size=64 << 20) as store:
        part = store.partition("t", 0)
        for round_ in range(60):
            store.write_batch({("t", 0): {b"%05d" % i: b"%d" % round_ * 100 for i in range(2000)}}, {})
            assert part.get(b"00007") == b"%d" % round_ * 100
        assert store.statistics().bytes_used < 8 << 20  # type: ignore[operator]


def test_range(store: Store) -> None:
    part = store.partition("per_min", 0)
    # Windowed keys: key + window start, so a range is one key's windows.
    data = {b"acct1|%04d" % w: b"%d" % w for w in (0, 60, 120, 180)}
    data[b"acct2|0000"] = b"x"
    data[b"acct0|0060"] = b"y"
    part.write(data)
    assert list(part.range(b"acct1|", b"acct1}")) == [
        (b"acct1|0000", b"0"),
        (b"acct1|0060", b"60"),
        (b"acct1|0120", b"120"),
        (b"acct1|0180", b"180"),
    ]
    # [start, end): start included, end excluded.
    assert [k for k, _ in part.range(b"acct1|0060", b"acct1|0180")] == [
        b"acct1|0060",
        b"acct1|0120",
    ]
    assert list(part.range(b"b", b"c")) == []
    assert list(part.range(b"acct2", b"acct1")) == []
    assert list(store.partition("per_min", 1).range(b"a", b"z")) == []


# -- batches and offsets -------------------------------------------------------------


def test_write_batch_many_partitions_with_offsets(store: Store) -> None:
    store.write_batch(
        {
            ("totals", 0): {b"a": b"1", b"b": b"2"},
            ("totals", 1): {b"c": b"3"},
            ("per_min", 0): {b"w": b"9"},
        },
        {TP("app-totals-changelog", 0): 41, TP("app-totals-changelog", 1): 7},
    )
    assert store.partition("totals", 0).get(b"b") == b"2"
    assert store.partition("totals", 1).get(b"c") == b"3"
    assert store.partition("per_min", 0).get(b"w") == b"9"
    assert store.persisted_offset(TP("app-totals-changelog", 0)) == 41
    assert store.persisted_offset(TP("app-totals-changelog", 1)) == 7
    assert store.persisted_offset(TP("app-totals-changelog", 2)) is None
    assert store.persisted_offset(TP("app-per_min-changelog", 0)) is None
    store.write_batch({("totals", 0): {b"a": None}}, {TP("app-totals-changelog", 0): 42})
    assert store.persisted_offset(TP("app-totals-changelog", 0)) == 42
    assert store.partition("totals", 0).get(b"a") is None
    assert store.partitions() == [("per_min", 0), ("totals", 0), ("totals", 1)]


def test_offsets_alone_can_be_recorded(store: Store) -> None:
    store.write_batch({}, {TP("cl", 0): 5})
    assert store.persisted_offset(TP("cl", 0)) == 5


def test_lmdb_data_and_offsets_survive_reopen(tmp_path: Path) -> None:
    with _lmdb(tmp_path) as store:
        store.write_batch(
            {("totals", 0): {b"a": b"1"}, ("totals", 5): {b"b": b"2"}, ("w", 0): {b"x": b"y"}},
            {TP("cl-totals", 0): 100, TP("cl-totals", 5): 200, TP("cl-w", 0): 3},
        )
        store.partition("empty", 1)  # created, never written
    with _lmdb(tmp_path) as store:
        assert store.partition("totals", 0).get(b"a") == b"1"
        assert list(store.partition("totals", 5).items()) == [(b"b", b"2")]
        assert store.partition("w", 0).get(b"x") == b"y"
        assert store.persisted_offset(TP("cl-totals", 0)) == 100
        assert store.persisted_offset(TP("cl-totals", 5)) == 200
        assert store.persisted_offset(TP("cl-w", 0)) == 3
        assert store.partitions() == [("totals", 0), ("totals", 5), ("w", 0)]


@pytest.mark.parametrize(
    "bad_writes",
    [
        {("t", 0): {b"ok": b"fine"}, ("t", 1): {b"k1": b"v", b"k2": "not bytes"}},
        {("t", 0): {b"ok": b"fine"}, ("t", 1): {"str key": b"v"}},
    ],
    ids=["value-str", "key-str"],
)
def test_failed_batch_writes_nothing(store: Store, bad_writes: dict[object, object]) -> None:
    store.write_batch({("t", 0): {b"before": b"1"}}, {TP("cl", 0): 10})
    with pytest.raises(TypeError, match=r"table 't' partition 1"):
        store.write_batch(bad_writes, {TP("cl", 0): 11, TP("cl", 1): 4})  # type: ignore[arg-type]
    assert store.partition("t", 0).get(b"ok") is None
    assert store.partition("t", 1).get(b"k1") is None
    assert list(store.partition("t", 0).items()) == [(b"before", b"1")]
    assert store.persisted_offset(TP("cl", 0)) == 10
    assert store.persisted_offset(TP("cl", 1)) is None
    assert store.partitions() == [("t", 0)]


def test_lmdb_batch_failing_inside_the_transaction_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fail after the data is written, while the offsets are being put: the
    # whole transaction must be rolled back, also on disk.
    with _lmdb(tmp_path) as store:
        store.write_batch({("t", 0): {b"a": b"old"}}, {TP("cl", 0): 1})

        def boom(offset: int) -> bytes:
            raise lmdb.DiskError("simulated disk failure")

        monkeypatch.setattr(lmdb_store, "_OFFSET", type("S", (), {"pack": staticmethod(boom)}))
        with pytest.raises(StoreError, match=r"'t'\[0\].*simulated disk failure") as info:
            store.write_batch({("t", 0): {b"a": b"new", b"b": b"2"}}, {TP("cl", 0): 2})
        assert isinstance(info.value.__cause__, lmdb.DiskError)
        monkeypatch.undo()
        assert store.partition("t", 0).get(b"a") == b"old"
    with _lmdb(tmp_path) as store:
        assert list(store.partition("t", 0).items()) == [(b"a", b"old")]
        assert store.persisted_offset(TP("cl", 0)) == 1


def _crash_inside_batch(path: str) -> None:
    import os

    store = LMDBStore(Path(path), map_size=8 << 20, sync=True)
    store.write_batch({("t", 0): {b"a": b"old"}}, {TP("cl", 0): 1})

    def die(offset: int) -> bytes:
        os._exit(3)  # the process dies in the middle of the write transaction

    lmdb_store._OFFSET = type("S", (), {"pack": staticmethod(die)})  # type: ignore[assignment]
    store.write_batch({("t", 0): {b"a": b"new", b"b": b"2"}}, {TP("cl", 0): 2})


def test_lmdb_process_crash_inside_a_batch_leaves_the_previous_state(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_crash_inside_batch, args=(str(tmp_path / "data"),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 3
    with _lmdb(tmp_path) as store:
        assert list(store.partition("t", 0).items()) == [(b"a", b"old")]
        assert store.persisted_offset(TP("cl", 0)) == 1


@pytest.mark.parametrize("key", [b"", b"k" * (MAX_KEY_SIZE + 1)], ids=["empty", "too-long"])
def test_bad_key_size_is_a_store_error_and_writes_nothing(store: Store, key: bytes) -> None:
    with pytest.raises(StoreError, match=rf"table 'tbl' partition 2: a key must be 1 to {MAX_KEY_SIZE}"):
        store.write_batch({("tbl", 2): {b"good": b"1", key: b"x"}}, {TP("cl", 2): 9})
    assert store.partition("tbl", 2).get(b"good") is None
    assert store.persisted_offset(TP("cl", 2)) is None
    assert store.partition("tbl", 2).get(key) is None
    # The longest allowed key works.
    store.partition("tbl", 2).write({b"k" * MAX_KEY_SIZE: b"max"})
    assert store.partition("tbl", 2).get(b"k" * MAX_KEY_SIZE) == b"max"


def test_bad_offset_is_rejected_before_writing(store: Store) -> None:
    with pytest.raises(ValueError, match=r"offset for cl\[0\]"):
        store.write_batch({("t", 0): {b"a": b"1"}}, {TP("cl", 0): -1})
    assert store.partition("t", 0).get(b"a") is None


# -- drop, close ---------------------------------------------------------------------


def test_drop_partition(store: Store) -> None:
    store.write_batch(
        {("t", 0): {b"a": b"1"}, ("t", 1): {b"b": b"2"}},
        {TP("cl", 0): 5, TP("cl", 1): 6},
    )
    view = store.partition("t", 0)
    store.drop_partition("t", 0, changelog=TP("cl", 0))
    assert view.get(b"a") is None
    assert len(view) == 0
    assert list(view.items()) == []
    assert store.persisted_offset(TP("cl", 0)) is None
    assert store.partitions() == [("t", 1)]
    # Its neighbour is untouched.
    assert store.partition("t", 1).get(b"b") == b"2"
    assert store.persisted_offset(TP("cl", 1)) == 6
    # The partition can be recovered again later, through the old view too.
    view.write({b"c": b"3"})
    assert store.partition("t", 0).get(b"c") == b"3"
    assert store.partitions() == [("t", 0), ("t", 1)]
    store.drop_partition("never", 9, changelog=None)


def test_lmdb_drop_survives_reopen(tmp_path: Path) -> None:
    with _lmdb(tmp_path) as store:
        store.write_batch({("t", 0): {b"a": b"1"}}, {TP("cl", 0): 5})
        store.drop_partition("t", 0, changelog=TP("cl", 0))
    with _lmdb(tmp_path) as store:
        assert store.partitions() == []
        assert store.partition("t", 0).get(b"a") is None
        assert store.persisted_offset(TP("cl", 0)) is None


def test_use_after_close_raises_closed_error(store: Store) -> None:
    part = store.partition("t", 0)
    part.write({b"a": b"1"})
    it = part.items()
    with store:
        pass
    assert store.closed
    store.close()  # twice is harmless
    for use in (
        lambda: part.get(b"a"),
        lambda: len(part),
        lambda: b"a" in part,
        lambda: list(part.keys()),
        lambda: list(it),
        lambda: part.write({b"b": b"2"}),
        lambda: store.partition("t", 1),
        lambda: store.write_batch({}, {TP("cl", 0): 1}),
        lambda: store.persisted_offset(TP("cl", 0)),
        lambda: store.drop_partition("t", 0, changelog=None),
        lambda: store.partitions(),
        lambda: store.statistics(),
    ):
        with pytest.raises(ClosedError, match="closed"):
            use()


def test_statistics(store: Store) -> None:
    empty = store.statistics()
    assert isinstance(empty, StoreStatistics)
    assert (empty.partitions, empty.entries) == (0, 0)
    store.write_batch({("t", 0): {b"a": b"1", b"b": b"2"}, ("u", 3): {b"c": b"3"}}, {})
    stats = store.statistics()
    assert (stats.partitions, stats.entries) == (2, 3)
    assert stats.bytes_used > empty.bytes_used
    if isinstance(store, LMDBStore):
        assert stats.map_size == 64 << 20
        assert stats.size_on_disk > 0
    else:
        assert stats.map_size is None
    with pytest.raises(AttributeError):
        stats.entries = 0  # type: ignore[misc]


# -- LMDB limits -------------------------------------------------------------------------


def test_map_grows_by_itself_and_keeps_its_size_on_reopen(tmp_path: Path) -> None:
    with _lmdb(tmp_path, map_size=256 * 1024, max_map_size=64 << 20) as store:
        store.write_batch({("t", 0): {b"kept": b"1"}}, {TP("cl", 0): 1})
        big = {b"%08d" % i: b"x" * 200 for i in range(5000)}  # about 1.4 MB
        store.write_batch({("t", 0): big}, {TP("cl", 0): 2})
        grown = store.statistics().map_size
        assert grown is not None and 1 << 20 < grown <= 4 << 20
        assert store.persisted_offset(TP("cl", 0)) == 2
        assert len(store.partition("t", 0)) == 5001
    with _lmdb(tmp_path, map_size=256 * 1024, max_map_size=64 << 20) as store:
        # LMDB opens a map at least as big as the data; it grows again when written.
        stats = store.statistics()
        assert stats.map_size is not None and stats.map_size >= stats.bytes_used
        assert store.partition("t", 0).get(b"00004999") == b"x" * 200
        store.write_batch({("t", 1): big}, {})
        assert len(store.partition("t", 1)) == 5000


def test_map_full_at_the_limit_is_a_store_error_naming_the_setting(tmp_path: Path) -> None:
    with _lmdb(tmp_path, map_size=256 * 1024, max_map_size=512 * 1024) as store:
        store.write_batch({("t", 0): {b"kept": b"1"}}, {TP("cl", 0): 1})
        big = {b"%08d" % i: b"x" * 200 for i in range(5000)}
        with pytest.raises(StoreError, match=r"full .*'t'\[0\].*lmdb_max_map_size") as info:
            store.write_batch({("t", 0): big}, {TP("cl", 0): 2})
        assert isinstance(info.value.__cause__, lmdb.MapFullError)
        # Nothing of the failed batch is there, and the store still works.
        assert len(store.partition("t", 0)) == 1
        assert store.persisted_offset(TP("cl", 0)) == 1
        store.write_batch({("t", 0): {b"after": b"2"}}, {TP("cl", 0): 3})
        assert store.partition("t", 0).get(b"after") == b"2"


def test_too_many_partitions_is_a_store_error(tmp_path: Path) -> None:
    with LMDBStore(tmp_path / "d", map_size=8 << 20, sync=False, max_dbs=4) as store:
        for p in range(3):  # + meta = 4
            store.partition("t", p)
        with pytest.raises(StoreError, match=r"'t'\[3\].*max_dbs"):
            store.partition("t", 3)


def test_data_dir_lock_in_the_same_process(tmp_path: Path) -> None:
    with (
        _lmdb(tmp_path),
        pytest.raises(StoreError, match=r"data dir .*data is in use by another worker"),
    ):
        _lmdb(tmp_path)
    # Released on close: the dir can be opened again.
    with _lmdb(tmp_path) as store:
        assert store.partitions() == []


def _hold_store(
    path: str,
    ready: multiprocessing.synchronize.Event,
    done: multiprocessing.synchronize.Event,
) -> None:
    with LMDBStore(Path(path), map_size=8 << 20, sync=False):
        ready.set()
        done.wait(30)


def test_data_dir_lock_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    path = tmp_path / "data"
    proc = ctx.Process(target=_hold_store, args=(str(path), ready, done))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreError, match=rf"data dir {path} is in use .*pid {proc.pid}\)"):
            LMDBStore(path, map_size=8 << 20)
    finally:
        done.set()
        proc.join(30)
    assert proc.exitcode == 0
    with LMDBStore(path, map_size=8 << 20) as store:
        assert store.partitions() == []


# -- open_store --------------------------------------------------------------------------


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    with open_store("memory://", path=tmp_path / "m", map_size=1 << 20, sync=True) as store:
        assert isinstance(store, MemoryStore)
    assert not (tmp_path / "m").exists()
    with open_store("LMDB://", path=tmp_path / "l", map_size=1 << 20, sync=True) as store:
        assert isinstance(store, LMDBStore)
        assert (tmp_path / "l" / "data.mdb").exists()


@pytest.mark.parametrize("url", ["rocksdb://", "lmdb", "", "lmdb:///var/data"])
def test_open_store_rejects_bad_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(url))):
        open_store(url, path=tmp_path, map_size=1 << 20, sync=True)


# -- timings (printed with -s; asserted loosely) -------------------------------------


def test_timing_10k_batch_and_gets(store: Store) -> None:
    n = 10_000
    data = {i.to_bytes(16, "big"): (i * 7).to_bytes(16, "big") for i in range(n)}
    t0 = time.perf_counter()
    store.write_batch({("bench", 0): data}, {TP("cl", 0): n - 1})
    t1 = time.perf_counter()
    part = store.partition("bench", 0)
    for key, value in data.items():
        assert part.get(key) == value
    t2 = time.perf_counter()
    print(
        f"\n{type(store).__name__}: write_batch of {n} keys {(t1 - t0) * 1e3:.1f} ms; "
        f"get {(t2 - t1) / n * 1e6:.2f} us/key"
    )
    assert len(part) == n
    assert t1 - t0 < 5.0
