"""The table manager: a worker component that owns the store, recovery, standbys and
the tables' part in every commit.

Lifecycle (see ``docs/tables.md``)::

    serve                       opens the store(s) and two readers, before the group join
    ├── follower task           standby partitions and GlobalTables: changelog -> store
    ├── (global tables caught up, then ready)
    on assign (hook)            replay the newly owned partitions, then the worker resumes them
    commit (participant)        prepare: seal dirty writes, produce the latest value per key
                                complete: after the flush, data + changelog offsets in ONE write_batch
                                (exactly_once: after the transaction committed; abort drops
                                every write not committed)
    on revoke (hook)            after the last commit: forget the partitions in memory, follow them
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import ClosedError, TableError
from .._topic import Topic
from .._types import TP
from .base import Store, open_store
from .recovery import (
    RecoveryProgress,
    RecoveryTracker,
    apply_messages,
    replay,
    run_changelog_callbacks,
    write_batch,
)
from .table import Table, TablePartition
from .thread import virtual_time

if TYPE_CHECKING:
    from .._app import App
    from .._transports.base import Producer, Reader
    from .._worker import Worker

__all__ = ["TableManager", "TableManagerStatistics"]

log = logging.getLogger(__name__)

_Writes = dict[tuple[str, int], dict[bytes, bytes | None]]


@dataclass(frozen=True, slots=True)
class TableManagerStatistics:
    """A snapshot of the tables on this worker.

    Attributes:
        recovered: changelog records replayed by recovery (on assignment), per
            changelog partition, since the worker started.
        followed: changelog records applied by the follower (standby
            partitions and GlobalTables), per changelog partition.
        recoveries: how many recoveries ran (one per assignment with table partitions).
        recovering: whether a recovery is running now.
        active: the table partitions this worker serves, per table.
        standbys: the changelog partitions followed as standbys.
        unpersisted: table writes not yet persisted in the store.
        recovery: the progress of the running recovery, or of the last one
            (``None`` before the first); see :class:`RecoveryProgress`.
    """

    recovered: dict[TP, int]
    followed: dict[TP, int]
    recoveries: int
    recovering: bool
    active: dict[str, list[int]]
    standbys: list[TP]
    unpersisted: int
    recovery: RecoveryProgress | None = None


class TableManager(Mapping[str, Table]):
    """The app's tables, by name (``app.tables``), and the worker component running them."""

    name = "tables"

    def __init__(self, app: App) -> None:
        self.app = app
        self._tables: dict[str, Table] = {}
        #: whether the store is open and tables can be used
        self.running = False
        #: the source partitions this worker owns and has recovered (tables read/write them)
        self.sources: set[TP] = set()
        #: produce each write at once (the table_changelog_eager setting)
        self.eager = False
        self._worker: Worker | None = None
        #: table writes dropped because their event's partition was lost or revoked meanwhile
        self.discarded_writes = 0
        self._stores: dict[str, Store] = {}
        self._persist_lock = trio.Lock()
        self._follow_lock = trio.Lock()
        self._replay_lock = trio.Lock()
        self._recovery_reader: Reader | None = None
        self._follower: Reader | None = None
        self._following: dict[TP, tuple[Table, int]] = {}
        self._applied: dict[TP, int] = {}
        self._global_waiting: set[TP] = set()
        self._global_ready = trio.Event()
        self._follow_progress = 0
        self._recovery_done = trio.Event()
        self._recovering = 0
        self._recoveries = 0
        self._recovered: dict[TP, int] = {}
        self._followed: dict[TP, int] = {}
        self._source_cache: dict[str, bool] = {}
        self._warned: set[Store] = set()
        self._tracker: RecoveryTracker | None = None

    # -- the registry ---------------------------------------------------------------

    def add(self, table: Table) -> Table:
        """Register a table (done by ``app.Table``).

        Raises:
            ValueError: a table of that name exists.
        """
        if table.name in self._tables:
            raise ValueError(f"a table named {table.name!r} is already registered")
        self._tables[table.name] = table
        return table

    def declare_writes_topics(self) -> None:
        """Give each plain table its writes topic and the agent applying it (idempotent).

        Done when the app's topics are declared, after the tables were
        windowed or joined (those keep writes outside events local).
        """
        for table in self._tables.values():
            table._declare_writes_topic()

    def __getitem__(self, name: str) -> Table:
        return self._tables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    @property
    def changelog_topics(self) -> set[str]:
        return {table.changelog_topic_name for table in self._tables.values()}

    @property
    def store(self) -> Store:
        """The store of the ``store`` setting (open while a worker runs).

        Raises:
            ClosedError: no worker is running.
        """
        return self._store_url(self.app.conf.store)

    def _store_url(self, url: str) -> Store:
        store = self._stores.get(url)
        if store is None:
            raise ClosedError(
                f"the table store {url!r} of app {self.app.id!r} is not open: no worker is running"
            )
        return store

    def _store_for(self, table: Table) -> Store:
        return self._store_url(table.store_url or self.app.conf.store)

    @property
    def producer(self) -> Producer:
        worker = self._worker
        if worker is None or worker.producer is None:
            raise ClosedError("tables: no running producer")
        return worker.producer

    def statistics(self) -> TableManagerStatistics:
        return TableManagerStatistics(
            recovered=dict(self._recovered),
            followed=dict(self._followed),
            recoveries=self._recoveries,
            recovering=self._recovering > 0,
            active={name: t.served_partitions() for name, t in self._tables.items()},
            standbys=sorted(tp for tp, (t, _) in self._following.items() if not t.is_global),
            unpersisted=sum(p.unpersisted() for t in self._tables.values() for p in t._parts.values()),
            recovery=None if self._tracker is None else self._tracker.snapshot(),
        )

    async def wait_until_recovery_completed(self) -> bool:
        """Wait until the tables of every partition assigned so far are recovered."""
        while True:
            done = self._recovery_done
            await done.wait()
            if done is self._recovery_done:
                return True

    # -- the worker component ---------------------------------------------------------

    def attach(self, worker: Worker) -> None:
        self._worker = worker
        if self._tables:
            worker.on_assign_hooks.append(self._on_assign)
            worker.on_revoke_hooks.append(self._on_revoke)
            worker.on_lost_hooks.append(self._on_lost)
            worker.commit_participants.append(self)

    def _reset(self) -> None:
        self.running = False
        self.sources = set()
        self._following = {}
        self._applied = {}
        self._global_waiting = set()
        self._global_ready = trio.Event()
        self._recovery_done = trio.Event()
        self._recovering = 0
        self._recoveries = 0
        self._recovered = {}
        self._followed = {}
        self._source_cache = {}
        self._warned = set()
        self._tracker = None
        for table in self._tables.values():
            table._parts = {}
            table._foreign = {}
            if table._windowing is not None:
                table._windowing.reset()

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        """Open the store(s), catch up the GlobalTables, follow standbys; closes the store on exit."""
        self._reset()
        if not self._tables:
            self._recovery_done.set()
            task_status.started()
            return
        conf = self.app.conf
        self.eager = bool(conf.table_changelog_eager)
        await self._check_topics(worker)
        try:
            async with AsyncExitStack() as stack:
                for url in sorted({t.store_url or conf.store for t in self._tables.values()}):
                    # Opening checks (and may scan) the data: off the trio thread, not abandoned
                    # (inline in virtual time, which would jump while a thread works).
                    opener = partial(
                        open_store,
                        url,
                        path=conf.data_path,
                        map_size=conf.lmdb_map_size,
                        max_map_size=conf.lmdb_max_map_size,
                        sync=conf.lmdb_sync,
                    )
                    if virtual_time():
                        await trio.lowlevel.checkpoint()
                        self._stores[url] = opener()
                    else:
                        self._stores[url] = await trio.to_thread.run_sync(opener)
                self._recovery_reader = await stack.enter_async_context(
                    worker.transport.open_reader(prompt_end=True)
                )
                follower = await stack.enter_async_context(worker.transport.open_reader())
                self._follower = follower
                nursery = await stack.enter_async_context(trio.open_nursery())
                initial: dict[TP, tuple[Table, int]] = {}
                for table in self._tables.values():
                    if table.is_global:
                        store = self._store_for(table)
                        for n in range(table.partitions):
                            view = await store.run(store.partition, table.name, n)
                            table._parts[n] = TablePartition(n, view)
                            initial[table.changelog_tp(n)] = (table, n)
                    elif conf.table_standby_replicas >= 1:
                        for n in range(table.partitions):
                            initial[table.changelog_tp(n)] = (table, n)
                self._global_waiting = {tp for tp, (t, _) in initial.items() if t.is_global}
                if not self._global_waiting:
                    self._global_ready.set()
                self._follow(initial)
                nursery.start_soon(self._follow_loop, follower)
                await self._wait_global_ready(conf.table_recovery_timeout)
                for table in self._tables.values():
                    if table.is_global:
                        for callback in table._recover_callbacks:
                            await callback()
                self.running = True
                for table in self._tables.values():
                    if table._windowing is not None:
                        nursery.start_soon(table._windowing.serve, worker, conf.table_cleanup_interval)
                    if not table.is_global:
                        nursery.start_soon(table._serve_timers, worker)
                if not self.app._needs_group():
                    self._recovery_done.set()
                log.info("%s", self._banner())
                task_status.started()
                await self._flush_loop(worker)
        finally:
            await self._close(worker)

    async def _close(self, worker: Worker) -> None:
        graceful = worker.stopping and worker.committer is None and self.running
        self.running = False
        # Local disk work: at least a moment, even past the stop deadline.
        limit = max(worker.transport.close_time_left(self.app.conf.shutdown_timeout), 0.5)
        with trio.move_on_after(limit, shield=True) as scope:
            if graceful:
                # No commit loop persists the tables' writes (no group): do it here.
                await self.flush()
            async with self._persist_lock, self._follow_lock:
                for store in self._stores.values():
                    await store.aclose()
        if scope.cancelled_caught:
            log.error("tables: the store could not be closed within the stop deadline (%.1fs)", limit)
        self._stores = {}
        self._recovery_reader = None
        self._follower = None
        for table in self._tables.values():
            table._parts = {}
            table._foreign = {}

    def _banner(self) -> str:
        parts = []
        for table in self._tables.values():
            kind = "global table" if table.is_global else "table"
            parts.append(
                f"{kind} {table.name} -> {table.changelog_topic_name} ({table.partitions} partitions)"
            )
        return "tables: " + "; ".join(parts)

    async def _check_topics(self, worker: Worker) -> None:
        names = sorted(self.changelog_topics)
        counts = await worker.transport.partition_counts(names)
        for table in self._tables.values():
            actual = counts.get(table.changelog_topic_name)
            if actual is None:
                raise TableError(
                    f"table {table.name!r}: changelog topic {table.changelog_topic_name!r} does not exist"
                )
            if actual != table.partitions:
                log.warning(
                    "table %r: changelog topic %r has %d partitions, the table was declared with %d; "
                    "using %d",
                    table.name,
                    table.changelog_topic_name,
                    actual,
                    table.partitions,
                    actual,
                )
                table.partitions = actual
        writes = [t.writes_topic_name for t in self._tables.values() if t.writes_topic is not None]
        for name, count in (await worker.transport.partition_counts(writes)).items():
            table = next(t for t in self._tables.values() if t.writes_topic_name == name)
            if count != table.partitions:
                raise TableError(
                    f"table {table.name!r}: its writes topic {name!r} has {count} partitions and its "
                    f"changelog {table.changelog_topic_name!r} {table.partitions}: they must be equal "
                    f"(delete {name!r} when no worker runs, it is created again at start)"
                )
        sources = {
            name: topic
            for agent in self.app.agents.values()
            if isinstance(topic := agent.channel, Topic)
            for name in topic.topics
            if name not in writes
        }
        source_counts = await worker.transport.partition_counts(sorted(sources))
        for name, count in source_counts.items():
            for table in self._tables.values():
                if not table.is_global and count != table.partitions:
                    log.warning(
                        "table %r (changelog %r) has %d partitions but source topic %r has %d: "
                        "%s; give tables as many partitions as their source topics",
                        table.name,
                        table.changelog_topic_name,
                        table.partitions,
                        name,
                        count,
                        f"writes while processing its partitions >= {table.partitions} fail"
                        if count > table.partitions
                        else "its keys are spread differently from the table's",
                    )

    async def _wait_global_ready(self, stall_timeout: float) -> None:
        while not self._global_ready.is_set():
            progress = self._follow_progress
            with trio.move_on_after(stall_timeout):
                await self._global_ready.wait()
            if not self._global_ready.is_set() and progress == self._follow_progress:
                from .._exceptions import RecoveryTimeoutError

                stuck = ", ".join(
                    f"table {self._following[tp][0].name!r} partition {tp.partition} (changelog {tp})"
                    for tp in sorted(self._global_waiting)
                )
                raise RecoveryTimeoutError(
                    f"global table recovery made no progress for {stall_timeout:.1f}s "
                    f"(table_recovery_timeout): {stuck}"
                )

    async def _flush_loop(self, worker: Worker) -> None:
        interval = self.app.conf.commit_interval
        while True:
            await trio.sleep(interval)
            if worker.committer is None:
                await self.flush()

    async def flush(self) -> None:
        """Produce and persist every table write now (the commit loop does this at each commit)."""
        await self.prepare_commit({})
        await self.producer.flush()
        await self.complete_commit({})

    # -- following: standbys and global tables -------------------------------------------

    def _follow(self, targets: Mapping[TP, tuple[Table, int]]) -> None:
        """Start following changelog partitions from their persisted offset + 1."""
        from .._transports.base import OFFSET_BEGINNING

        if not targets or self._follower is None:
            return
        starts: dict[TP, int] = {}
        for tp, target in targets.items():
            persisted = self._store_for(target[0]).persisted_offset(tp)
            starts[tp] = OFFSET_BEGINNING if persisted is None else persisted + 1
            self._following[tp] = target
        self._follower.assign_nowait(starts)

    def _unfollow(self, tps: list[TP]) -> None:
        gone = [tp for tp in tps if self._following.pop(tp, None) is not None]
        if gone and self._follower is not None:
            self._follower.unassign_nowait(gone)

    async def _follow_loop(self, reader: Reader) -> None:
        while True:
            batch = await reader.getmany()
            self._follow_progress += 1
            writes: dict[Store, _Writes] = {}
            offsets: dict[Store, dict[TP, int]] = {}
            counts: dict[TP, int] = {}
            events: list[Any] = []
            async with self._follow_lock:
                apply_messages(
                    batch.messages, self._following, writes, offsets, counts, self._store_for, events
                )
                for store in set(writes) | set(offsets):
                    await write_batch(store, writes.get(store, {}), offsets.get(store, {}))
                for store_offsets in offsets.values():
                    self._applied.update(store_offsets)
            for tp, n in counts.items():
                self._followed[tp] = self._followed.get(tp, 0) + n
                target = self._following.get(tp)
                if target is not None and target[0].is_global:
                    part = target[0]._parts.get(target[1])
                    if part is not None:
                        self._prune_global(part, tp)
            if self._global_waiting and batch.eof:
                self._global_waiting -= batch.eof
                if not self._global_waiting:
                    self._global_ready.set()
            if events:
                await run_changelog_callbacks(events)

    def _prune_global(self, part: TablePartition, tp: TP) -> None:
        """Forget this worker's GlobalTable writes the follower has put in the store."""
        applied = self._applied.get(tp, -1)
        pending = part.pending
        while (
            pending
            and pending[0].outstanding == 0
            and pending[0].error is None
            and pending[0].offset <= applied
        ):
            del pending[0]

    # -- rebalances ---------------------------------------------------------------------

    def _is_source(self, topic: str) -> bool:
        """Whether an agent consumes ``topic`` (declared, or subscribed at run time by group_by)."""
        worker = self._worker
        if worker is not None:
            return bool(worker._route(topic))
        known = self._source_cache.get(topic)
        if known is None:
            known = self._source_cache[topic] = any(
                isinstance(agent.channel, Topic) and agent.channel.matches(topic)
                for agent in self.app.agents.values()
            )
        return known

    def _partitioned(self) -> list[Table]:
        return [table for table in self._tables.values() if not table.is_global]

    async def _on_assign(self, assigned: frozenset[TP]) -> None:
        sources = {tp for tp in assigned if self._is_source(tp.topic)}
        if not sources:
            return
        numbers = sorted({tp.partition for tp in sources})
        todo: dict[TP, tuple[Table, int]] = {}
        for table in self._partitioned():
            for n in numbers:
                part = table._parts.get(n)
                if n < table.partitions and (part is None or part.view is None):
                    todo[table.changelog_tp(n)] = (table, n)
        if self._recovering == 0 and self._recovery_done.is_set():
            self._recovery_done = trio.Event()
        self._recovering += 1
        try:
            async with self._follow_lock:
                self._unfollow(list(todo))
            assert self._recovery_reader is not None and self._worker is not None
            # One replay at a time: they share the reader (an assignment made
            # while another recovers waits for it, its partitions paused).
            async with self._replay_lock:
                names = {tp: table.name for tp, (table, _n) in todo.items()}
                self._tracker = tracker = RecoveryTracker(len(todo), trio.current_time(), names)
                result = await replay(
                    self._recovery_reader,
                    todo,
                    store_for=self._store_for,
                    stall_timeout=self.app.conf.table_recovery_timeout,
                    buffer_size=max((t.recovery_buffer_size for t, _ in todo.values()), default=1000),
                    tracker=tracker,
                    open_reader=partial(self._worker.transport.open_reader, prompt_end=True),
                )
            if todo:
                progress = tracker.snapshot()
                log.log(
                    logging.INFO if progress.done else logging.DEBUG,
                    "tables recovered: %s",
                    progress.describe(),
                )
            self._recoveries += 1
            for tp, n in result.records.items():
                self._recovered[tp] = self._recovered.get(tp, 0) + n
            self._warn_rebuilt(todo, result.records)
            for table, n in todo.values():
                part = table._parts.get(n)
                if part is None:
                    part = table._parts[n] = TablePartition(n)
                store = self._store_for(table)
                part.view = await store.run(store.partition, table.name, n)
                if table._windowing is not None:
                    # Index the partition's windows now, on the store's thread.
                    await table._windowing.prepare(n, part)
            self.sources |= sources
            for table in {table for table, _ in todo.values()}:
                for callback in table._recover_callbacks:
                    await callback()
        finally:
            self._recovering -= 1
            if self._recovering == 0:
                self._recovery_done.set()

    def _warn_rebuilt(self, todo: Mapping[TP, tuple[Table, int]], records: Mapping[TP, int]) -> None:
        """Say once per store when its state was rebuilt because the store was new or damaged."""
        rebuilt: dict[Store, int] = {}
        for tp, (table, _n) in todo.items():
            store = self._store_for(table)
            # the standby follower may have refilled the store before this recovery
            count = records.get(tp, 0) + self._followed.get(tp, 0)
            if store.fresh and count and store not in self._warned:
                rebuilt[store] = rebuilt.get(store, 0) + count
        for store, count in rebuilt.items():
            self._warned.add(store)
            where = getattr(store, "path", None)
            if store.moved_aside is not None:
                why = f"it was damaged and moved to {store.moved_aside}"
            else:
                why = "it held no data: a new data dir, or one that was deleted"
            log.warning(
                "tables: the store in %s was rebuilt from the changelogs (%s); %d records replayed",
                where,
                why,
                count,
            )

    async def _on_lost(self, lost: frozenset[TP]) -> None:
        """Partitions were lost (no handover): drop their tables' unpersisted writes
        and their changelog records not delivered yet, so nothing written here
        lands after the new owner's writes (which would move a key back)."""
        sources = {tp for tp in lost if self._is_source(tp.topic)}
        kept = {tp.partition for tp in self.sources - sources}
        gone = sorted({tp.partition for tp in sources} - kept)
        if not gone:
            return
        self.sources -= sources
        changelogs: set[TP] = set()
        async with self._persist_lock:
            for table in self._partitioned():
                for n in gone:
                    changelogs.add(table.changelog_tp(n))
                    part = table._parts.pop(n, None)
                    if part is not None and part.unpersisted():
                        log.warning(
                            "table %r partition %d lost with %d writes not persisted: discarded "
                            "(the new owner has the changelog and processes the events again)",
                            table.name,
                            n,
                            part.unpersisted(),
                        )
        worker = self._worker
        if worker is not None and not worker.exactly_once and changelogs:
            # exactly_once: the open transaction is aborted instead.
            dropped = await self.producer.discard_queued(changelogs)
            if dropped:
                log.warning(
                    "dropped %d changelog record(s) of lost partitions not delivered yet (%s)",
                    dropped,
                    ", ".join(map(str, sorted(changelogs))),
                )

    async def _on_revoke(self, revoked: frozenset[TP]) -> None:
        sources = {tp for tp in revoked if self._is_source(tp.topic)}
        if not sources:
            return
        self.sources -= sources
        kept = {tp.partition for tp in self.sources}
        gone = sorted({tp.partition for tp in sources} - kept)
        follow: dict[TP, tuple[Table, int]] = {}
        async with self._persist_lock:
            for table in self._partitioned():
                for n in gone:
                    # Followed as a standby from now on, also when its recovery was
                    # cancelled before it served (no view) or it was lost (no part).
                    tp = table.changelog_tp(n)
                    if n < table.partitions and tp not in self._following:
                        follow[tp] = (table, n)
                    part = table._parts.get(n)
                    if part is None or part.view is None:
                        continue
                    lost = part.unpersisted()
                    if lost:
                        log.warning(
                            "table %r partition %d revoked with %d writes not persisted; they are "
                            "recovered from the changelog or the source events are processed again",
                            table.name,
                            n,
                            lost,
                        )
                    del table._parts[n]
        worker = self._worker
        if (
            follow
            and self.app.conf.table_standby_replicas >= 1
            and worker is not None
            and not worker.stopping
        ):
            async with self._follow_lock:
                self._follow(follow)

    # -- the commit participant ---------------------------------------------------------

    async def prepare_commit(self, offsets: Mapping[TP, int]) -> None:
        """Seal each partition's dirty writes and produce the latest value of each key."""
        await trio.lowlevel.checkpoint()
        if not self.running:
            return
        eager = self.eager
        send = None
        for table in self._tables.values():
            for parts, topic in (
                (table._parts, table.changelog_topic_name),
                (table._foreign, table.writes_topic_name),
            ):
                for part in parts.values():
                    layer = part.dirty
                    if not layer.data and not layer.outstanding:
                        continue
                    part.dirty = type(layer)()
                    part.pending.append(layer)
                    if eager:
                        continue
                    if send is None:
                        send = self.producer.send_batch_nowait
                    data = layer.data
                    layer.outstanding += len(data)
                    records = [(kbytes, entry[2]) for kbytes, entry in data.items()]
                    send(topic, part.number, records, on_delivery=layer.delivered_batch)

    async def abort_commit(self) -> None:
        """The transaction was aborted (exactly_once): drop every write not committed.

        What is left is the store, which holds only committed state: the
        sealed layers (their changelog records were aborted) and the dirty
        ones go, in every partition.
        """
        async with self._persist_lock:
            dropped = 0
            for table in self._tables.values():
                for n, part in list(table._parts.items()):
                    dropped += part.unpersisted()
                    part.dirty = type(part.dirty)()
                    part.pending.clear()
                    if part.view is None:
                        del table._parts[n]
                dropped += sum(part.unpersisted() for part in table._foreign.values())
                table._foreign = {}
                table._rolled_back()  # its in-memory indexes are rebuilt from the store
        if dropped:
            log.info("tables: rolled back %d uncommitted writes", dropped)

    async def complete_commit(self, offsets: Mapping[TP, int]) -> None:
        """After the flush: write the delivered writes and their changelog offsets, atomically."""
        if not self.running:
            await trio.lowlevel.checkpoint()
            return
        async with self._persist_lock:
            writes: dict[Store, _Writes] = {}
            reached: dict[Store, dict[TP, int]] = {}
            taken: list[tuple[TablePartition, int]] = []
            for table in self._tables.values():
                self._sent_foreign(table)
                for n, part in list(table._parts.items()):
                    ready = 0
                    for layer in part.pending:
                        if layer.outstanding:
                            break
                        if layer.error is not None:
                            raise TableError(
                                f"table {table.name!r}: a changelog record to "
                                f"{table.changelog_topic_name}[{n}] was not delivered: {layer.error}"
                            ) from layer.error
                        ready += 1
                    if not ready:
                        continue
                    tp = table.changelog_tp(n)
                    if table.is_global:
                        # The follower persists them when it reads them back.
                        self._prune_global(part, tp)
                        continue
                    if part.view is None:
                        # Not served here: the changelog has them, the owner reads them.
                        del part.pending[:ready]
                        if not part.pending and not part.dirty.data:
                            del table._parts[n]
                        continue
                    store = self._store_for(table)
                    data = writes.setdefault(store, {}).setdefault((table.name, n), {})
                    top = -1
                    for layer in part.pending[:ready]:
                        for kbytes, entry in layer.data.items():
                            data[kbytes] = entry[2]
                        top = max(top, layer.offset)
                    if top >= 0:
                        reached.setdefault(store, {})[tp] = top
                    taken.append((part, ready))
            for store in set(writes) | set(reached):
                await write_batch(store, writes.get(store, {}), reached.get(store, {}))
            for part, ready in taken:
                del part.pending[:ready]

    def _sent_foreign(self, table: Table) -> None:
        """Forget the writes outside events delivered to the owners' writes topic.

        Raises:
            TableError: one was not delivered (the commit does not happen).
        """
        for n, part in list(table._foreign.items()):
            pending = part.pending
            while pending and not pending[0].outstanding:
                error = pending[0].error
                if error is not None:
                    raise TableError(
                        f"table {table.name!r}: a write made outside an event to "
                        f"{table.writes_topic_name}[{n}] (for the worker owning partition {n}) "
                        f"was not delivered: {error}"
                    ) from error
                del pending[0]
            if not pending and not part.dirty.data:
                del table._foreign[n]
