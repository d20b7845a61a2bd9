"""Changelog replay: recovery of newly owned partitions, and the follower that keeps
standbys and global tables warm.

Both read the changelog with a :class:`~streamtrio._transports.base.Reader`
(outside the consumer group) and write what they read to the store together
with the offset reached, in one atomic ``write_batch`` per batch, so a replay
interrupted by a crash resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import RecoveryTimeoutError
from .._stream import Event
from .._types import TP, Message
from .base import Store

if TYPE_CHECKING:
    from .._transports.base import Reader, ReaderBatch
    from .table import Table

__all__ = ["RecoveryProgress", "RecoveryTracker", "Replay", "apply_messages", "replay"]

log = logging.getLogger(__name__)

#: Seconds between progress lines of a long recovery.
PROGRESS_EVERY = 3.0
#: Seconds between the warnings of a recovery that reads nothing.
WAIT_REPORT_EVERY = 10.0
#: Seconds a recovery waits for the changelogs' end offsets (its progress total) before it starts.
ESTIMATE_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class RecoveryProgress:
    """A snapshot of a running (or the last) recovery, for logs and displays.

    Attributes:
        partitions: changelog partitions this recovery replays.
        remaining: those not yet at their end.
        done: records replayed so far.
        total: records to replay, estimated from the changelogs' end offsets
            when the transport's reader can tell them (``None`` otherwise).
        rate: records per second since the recovery began.
        eta: seconds left at that rate (``None`` without a total or a rate).
        elapsed: seconds since the recovery began.
        finished: whether every partition reached its end.
        tables: records each table still has to replay (``None`` while its
            changelogs' end is unknown); 0 for a table whose partitions all
            reached their end.
    """

    partitions: int
    remaining: int
    done: int
    total: int | None
    rate: float
    eta: float | None
    elapsed: float
    finished: bool
    tables: Mapping[str, int | None] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line: ``1200/5000 records (24%), 800 records/s, ETA 4.8s, 2 partitions left``."""
        if self.total:
            head = f"{self.done}/{self.total} records ({100 * self.done / self.total:.0f}%)"
        else:
            head = f"{self.done} records (total unknown)"
        eta = f", ETA {self.eta:.1f}s" if self.eta is not None else ""
        return f"{head}, {self.rate:.0f} records/s{eta}, {self.remaining} partition(s) left"


class RecoveryTracker:
    """The mutable progress of one recovery; :meth:`snapshot` gives a :class:`RecoveryProgress`.

    Args:
        partitions: changelog partitions the recovery replays.
        began: trio time it began.
        tables: the table of each changelog partition, for per-table counts.
    """

    def __init__(self, partitions: int, began: float, tables: Mapping[TP, str] | None = None) -> None:
        self.partitions = partitions
        self.remaining = partitions
        self.done = 0
        self.total: int | None = None
        self.began = began
        self.now = began
        self.tables: dict[TP, str] = dict(tables or {})
        #: records replayed per changelog partition (the replay's own counts)
        self.records: Mapping[TP, int] = {}
        #: records each changelog partition has to replay, when the reader can tell its end
        self.to_replay: Mapping[TP, int] | None = None
        #: changelog partitions not at their end yet (the replay's own set)
        self.unfinished: Collection[TP] = set(self.tables)

    def remaining_by_table(self) -> dict[str, int | None]:
        """Records each table still has to replay (``None``: its changelogs' end is unknown)."""
        left: dict[str, int | None] = {}
        for tp, name in self.tables.items():
            if tp not in self.unfinished:
                n: int | None = 0
            elif self.to_replay is None or tp not in self.to_replay:
                n = None
            else:
                n = max(self.to_replay[tp] - self.records.get(tp, 0), 0)
            before = left.get(name, 0)
            left[name] = None if before is None or n is None else before + n
        return left

    def snapshot(self) -> RecoveryProgress:
        elapsed = max(self.now - self.began, 0.0)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        total = self.total
        if total is not None:
            total = max(total, self.done)  # end offsets can be low (Tansu): never below done
        eta = None
        if total is not None and rate > 0:
            eta = (total - self.done) / rate
        elif total is not None and total == self.done:
            eta = 0.0
        return RecoveryProgress(
            partitions=self.partitions,
            remaining=self.remaining,
            done=self.done,
            total=total,
            rate=rate,
            eta=eta,
            elapsed=elapsed,
            finished=self.remaining == 0,
            tables=self.remaining_by_table(),
        )


async def _estimate_total(reader: Reader, starts: Mapping[TP, int]) -> dict[TP, int] | None:
    """Records between each start and its partition's end, if the reader can tell the ends."""
    try:
        ends: Mapping[TP, int] = await reader.end_offsets(list(starts))
    except Exception:  # an estimate only: the progress line says "total unknown"
        log.debug("recovery: the changelogs' end offsets are unknown", exc_info=True)
        return None
    return {tp: max(ends.get(tp, 0) - max(start, 0), 0) for tp, start in starts.items()}


@dataclass(slots=True)
class Replay:
    """What one recovery replayed, per changelog partition."""

    records: dict[TP, int] = field(default_factory=dict)
    seconds: dict[TP, float] = field(default_factory=dict)


async def write_batch(
    store: Store, writes: dict[tuple[str, int], dict[bytes, bytes | None]], offsets: Mapping[TP, int]
) -> None:
    """``store.write_batch`` on the store's thread (never abandoned on cancel)."""
    await store.run(store.write_batch, writes, offsets)


def apply_messages(
    messages: Iterable[Message],
    targets: Mapping[TP, tuple[Table, int]],
    writes: dict[Store, dict[tuple[str, int], dict[bytes, bytes | None]]],
    offsets: dict[Store, dict[TP, int]],
    counts: dict[TP, int],
    store_for: Any,
    events: list[tuple[Table, Message]] | None = None,
) -> int:
    """Stage changelog records as store writes; returns how many were staged.

    Records of partitions not in ``targets`` are ignored; a record without a
    key (not one streamtrio wrote) is skipped with a warning.

    The hot loop of a replay: a batch holds runs of records of one partition,
    so the partition's table, store and staging dict are looked up once per
    run, not per record.
    """
    staged = 0
    run: _Run | None = None
    topic: str | None = None
    partition = -1
    for message in messages:
        if message.partition != partition or message.topic != topic:
            if run is not None:
                run.close(offsets, counts)
            topic, partition = message.topic, message.partition
            tp = TP(topic, partition)
            target = targets.get(tp)
            run = None if target is None else _Run(tp, target, store_for(target[0]), writes, events)
        if run is None:
            continue
        key = message.key
        if not key:
            log.warning(
                "table %r: skipping a changelog record without a key at %s[%d]@%d",
                run.table.name,
                message.topic,
                message.partition,
                message.offset,
            )
        else:
            staging = run.staging
            if staging is None:
                staging = run.open_staging()
            staging[key] = message.value
            staged += 1
            if run.events is not None:
                run.events.append((run.table, message))
        run.offset = message.offset
        run.count += 1
    if run is not None:
        run.close(offsets, counts)
    return staged


class _Run:
    """What :func:`apply_messages` keeps for a run of one partition's records."""

    __slots__ = ("count", "events", "number", "offset", "staging", "store", "table", "tp", "writes")

    def __init__(
        self,
        tp: TP,
        target: tuple[Table, int],
        store: Store,
        writes: dict[Store, dict[tuple[str, int], dict[bytes, bytes | None]]],
        events: list[tuple[Table, Message]] | None,
    ) -> None:
        self.tp = tp
        self.table, self.number = target
        self.store = store
        self.writes = writes
        self.events = events if events is not None and self.table._on_changelog_event is not None else None
        self.staging: dict[bytes, bytes | None] | None = None
        self.offset = -1
        self.count = 0

    def open_staging(self) -> dict[bytes, bytes | None]:
        self.staging = self.writes.setdefault(self.store, {}).setdefault((self.table.name, self.number), {})
        return self.staging

    def close(self, offsets: dict[Store, dict[TP, int]], counts: dict[TP, int]) -> None:
        if self.count:
            offsets.setdefault(self.store, {})[self.tp] = self.offset
            counts[self.tp] = counts.get(self.tp, 0) + self.count


async def flush_staged(
    writes: dict[Store, dict[tuple[str, int], dict[bytes, bytes | None]]],
    offsets: dict[Store, dict[TP, int]],
) -> None:
    for store in set(writes) | set(offsets):
        await write_batch(store, writes.get(store, {}), offsets.get(store, {}))
    writes.clear()
    offsets.clear()


async def run_changelog_callbacks(events: list[tuple[Table, Message]]) -> None:
    for table, message in events:
        callback = table._on_changelog_event
        if callback is None:
            continue
        key = table._decode_key(message.key) if message.key else None
        value = None if message.value is None else table._decode_value(message.value)
        await callback(Event(table.app, key, value, message.headers, message))
    events.clear()


async def _estimate_into(tracker: RecoveryTracker, reader: Reader, starts: Mapping[TP, int]) -> None:
    tracker.to_replay = await _estimate_total(reader, starts)
    tracker.total = None if tracker.to_replay is None else sum(tracker.to_replay.values())


async def replay(
    reader: Reader,
    targets: Mapping[TP, tuple[Table, int]],
    *,
    store_for: Any,
    stall_timeout: float,
    buffer_size: int,
    tracker: RecoveryTracker | None = None,
    open_reader: Callable[[], AbstractAsyncContextManager[Reader]] | None = None,
) -> Replay:
    """Replay the changelog partitions ``targets`` from their persisted offset + 1 to the end.

    The end is an end-of-partition event from the reader. Writes reach the
    store every ``buffer_size`` records and at each partition's end. Progress
    is kept in ``tracker`` and logged every :data:`PROGRESS_EVERY` seconds.

    A reader that delivers nothing for :data:`WAIT_REPORT_EVERY` seconds is
    said so in a warning; with ``open_reader``, the replay then goes on from
    where it was with a new reader (a new client and connection: a Kafka
    client can keep a partition stuck after its leader moved, librdkafka
    issues 5430 and 5593).

    Raises:
        RecoveryTimeoutError: nothing arrived for ``timeout`` seconds; names
            the table, changelog topic and partition(s) still replaying.
    """
    from .._transports.base import OFFSET_BEGINNING

    result = Replay()
    if not targets:
        return result
    starts: dict[TP, int] = {}
    for tp, (table, _number) in targets.items():
        persisted = store_for(table).persisted_offset(tp)
        starts[tp] = OFFSET_BEGINNING if persisted is None else persisted + 1
        result.records[tp] = 0
    if tracker is None:
        tracker = RecoveryTracker(len(targets), trio.current_time())
    replayer = _Replayer(targets, result, tracker, store_for, stall_timeout, buffer_size, starts)
    replayer.can_reopen = open_reader is not None
    tracker.records, tracker.unfinished = result.records, replayer.remaining  # read live by the tracker
    # The total is for progress only: asked before the partitions are assigned
    # (a Kafka reader's ListOffsets queue behind its own long-poll fetches) and
    # never waited for longer than ESTIMATE_WAIT (a broker slow to answer must
    # not hold the recovery up).
    with trio.move_on_after(ESTIMATE_WAIT):
        await _estimate_into(tracker, reader, starts)
    reader.assign_nowait(starts)
    try:
        try:
            await replayer.run(reader)
        except _Stalled:
            reader.unassign_nowait(list(targets))
            assert open_reader is not None
            await _read_with_new_readers(replayer, open_reader)
    finally:
        reader.unassign_nowait(list(targets))
    return result


async def _read_with_new_readers(
    replayer: _Replayer, open_reader: Callable[[], AbstractAsyncContextManager[Reader]]
) -> None:
    """Go on with a new reader (closing it and opening another whenever it stalls too)."""
    while True:
        async with open_reader() as reader:
            reader.assign_nowait(replayer.positions(replayer.remaining))
            try:
                await replayer.run(reader)
                return
            except _Stalled:
                continue


class _Stalled(Exception):
    """The reader delivered nothing for a while: read again with a new one."""


class _Replayer:
    """The replay loop of :func:`replay`: reads until every target reached its end."""

    def __init__(
        self,
        targets: Mapping[TP, tuple[Table, int]],
        result: Replay,
        tracker: RecoveryTracker,
        store_for: Any,
        stall_timeout: float,
        buffer_size: int,
        starts: Mapping[TP, int],
    ) -> None:
        self.targets = targets
        self.result = result
        self.tracker = tracker
        self.store_for = store_for
        self.stall_timeout = stall_timeout
        self.buffer_size = buffer_size
        self.remaining = set(targets)
        #: whether a stall ends :meth:`run` (to go on with a new reader)
        self.can_reopen = False
        #: the last offset read per partition, for going on with a new reader
        self._last: dict[TP, int] = {}
        self._starts = starts
        #: trio time of the last batch (or of the start)
        self._progress_at = self._began = trio.current_time()

    def positions(self, tps: Iterable[TP]) -> dict[TP, int]:
        """Where to go on reading each of ``tps``."""
        return {tp: self._last[tp] + 1 if tp in self._last else self._starts[tp] for tp in tps}

    async def run(self, reader: Reader) -> None:
        """Read ``reader`` until every target reached its end.

        Raises:
            _Stalled: nothing came for :data:`WAIT_REPORT_EVERY` seconds (with ``can_reopen``).
            RecoveryTimeoutError: nothing came for ``stall_timeout`` seconds.
        """
        targets, result, tracker, remaining = self.targets, self.result, self.tracker, self.remaining
        began = self._began
        last_report = trio.current_time()
        writes: dict[Store, dict[tuple[str, int], dict[bytes, bytes | None]]] = {}
        offsets: dict[Store, dict[TP, int]] = {}
        events: list[tuple[Table, Message]] = []
        buffered = 0
        while remaining:
            try:
                batch = await self._next_batch(reader)
            except _Stalled:
                # What was read is kept: the next reader goes on after it.
                await flush_staged(writes, offsets)
                await run_changelog_callbacks(events)
                raise
            before = sum(result.records.values())
            buffered += apply_messages(
                batch.messages, targets, writes, offsets, result.records, self.store_for, events
            )
            for store_offsets in offsets.values():
                self._last.update(store_offsets)
            tracker.done += sum(result.records.values()) - before
            done = batch.eof & remaining
            if buffered >= self.buffer_size or done:
                await flush_staged(writes, offsets)
                await run_changelog_callbacks(events)
                buffered = 0
            now = tracker.now = trio.current_time()
            for tp in sorted(done):
                remaining.discard(tp)
                tracker.remaining = len(remaining)
                result.seconds[tp] = now - began
                log.log(
                    logging.INFO if result.records[tp] else logging.DEBUG,
                    "table %r partition %d recovered: %d records replayed from %s[%d] in %.2fs",
                    targets[tp][0].name,
                    tp.partition,
                    result.records[tp],
                    tp.topic,
                    tp.partition,
                    now - began,
                )
            if remaining and now - last_report >= PROGRESS_EVERY:
                last_report = now
                log.info(
                    "recovering tables: %s (%s)",
                    tracker.snapshot().describe(),
                    ", ".join(str(tp) for tp in sorted(remaining)[:8]),
                )
        await flush_staged(writes, offsets)
        await run_changelog_callbacks(events)

    async def _next_batch(self, reader: Reader) -> ReaderBatch:
        """The reader's next batch; says so every :data:`WAIT_REPORT_EVERY` seconds while
        none comes, and gives up after ``stall_timeout`` seconds without progress.

        Raises:
            _Stalled: nothing came for :data:`WAIT_REPORT_EVERY` seconds (with ``can_reopen``).
            RecoveryTimeoutError: nothing came for ``stall_timeout`` seconds.
        """
        stall_timeout = self.stall_timeout
        while True:
            waited = trio.current_time() - self._progress_at
            with trio.move_on_after(min(WAIT_REPORT_EVERY, stall_timeout - waited)):
                batch = await reader.getmany()
                self._progress_at = trio.current_time()
                return batch
            waited = trio.current_time() - self._progress_at
            stuck = ", ".join(
                f"table {self.targets[tp][0].name!r} partition {tp.partition} "
                f"(changelog {tp.topic}[{tp.partition}], {self.result.records[tp]} records replayed)"
                for tp in sorted(self.remaining)
            )
            if waited >= stall_timeout:
                raise RecoveryTimeoutError(
                    f"recovery made no progress for {stall_timeout:.1f}s (table_recovery_timeout): {stuck}"
                )
            log.warning(
                "recovering tables: nothing read from the changelogs for %.0fs (the broker may be "
                "unreachable; %sgiving up after table_recovery_timeout=%.0fs): %s",
                waited,
                "reading them again with a new client; " if self.can_reopen else "",
                stall_timeout,
                stuck,
            )
            if self.can_reopen:
                raise _Stalled
