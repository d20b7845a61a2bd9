"""Exactly-once processing: the transactional commit (``processing_guarantee="exactly_once"``).

One transactional producer per worker carries everything the worker produces
(sink and ``send`` messages, changelog records, repartition copies, RPC
replies) in a transaction that is always open while the worker runs. A
commit, every ``commit_interval``:

1. holds the agents' topic inboxes (no new event is handed out) and waits
   until no event is in flight, so no event is half in the transaction: its
   sends and table writes are all in, and so is its offset, or none is;
2. lets the participants produce what the events changed (tables: the latest
   value of each dirty key to the changelog);
3. flushes the producer, adds the frontier offsets of every assigned source
   partition to the transaction (``send_offsets_to_transaction``) and commits
   it: the outputs, the changelog records and the offsets become visible to
   ``read_committed`` readers together, or not at all;
4. lets the participants persist (tables write LMDB), only now that the
   transaction is committed, and releases the inboxes. The next message sent
   begins the next transaction.

On revoke the open transaction is committed, with the revoked partitions'
offsets, before they go. On an error (an agent crash, a failed transaction)
the transaction is aborted, the tables drop every change not committed, and
the worker stops; a restart resumes from the committed offsets. A fenced
producer (a newer worker with the same transactional id) stops the worker
with :class:`~streamtrio.ProducerFencedError`.

The transactional id is ``<app id>-<worker id>``: the ``worker_id`` setting,
or an id created once and kept in ``<datadir>/worker-id``. A restart with the
same data dir uses the same id and fences a zombie of itself. A running
worker holds the data dir (a lock on ``<datadir>/worker-id.lock``), so a
second worker started on it is refused instead of fencing the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from . import _pidlock as pidlock
from ._commit import CommitStatistics, Committer
from ._exceptions import ProducerFencedError, StreamtrioError, TransactionError, TransportError, WorkerError
from ._lanes import Inbox
from ._types import TP

if TYPE_CHECKING:
    from ._settings import Settings
    from ._transports.base import Producer

__all__ = ["TransactionalCommitter", "claimed_transactional_id", "transactional_id"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often the commit checks whether the events in flight are done.
_QUIESCE_POLL = 0.001
#: Bound on aborting and finishing a transaction while the worker stops.
_GRACE = 10.0


def transactional_id(settings: Settings) -> str:
    """``<app id>-<worker id>``: stable across restarts of the same worker.

    The worker id is the ``worker_id`` setting, else the id stored in
    ``<datadir>/worker-id`` (created on first use).
    """
    worker_id = settings.worker_id
    if not worker_id:
        path = settings.data_path / "worker-id"
        try:
            worker_id = path.read_text().strip()
        except FileNotFoundError:
            worker_id = ""
        if not worker_id:
            worker_id = uuid.uuid4().hex[:12]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(worker_id + "\n")
    return f"{settings.appid}-{worker_id}"


@contextlib.contextmanager
def claimed_transactional_id(settings: Settings) -> Iterator[str]:
    """:func:`transactional_id`, with the data dir held by this worker while in use.

    Two workers on one data dir would share the worker id kept there, so the
    transactional id, and fence each other in turn. Only with the id from
    the data dir: a ``worker_id`` setting is the operator's choice.

    Raises:
        WorkerError: another worker (of any process) holds the data dir.
    """
    if settings.worker_id:
        yield transactional_id(settings)
        return
    path = settings.data_path
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = pidlock.hold(path / "worker-id.lock")
    except pidlock.LockHeld as held:
        raise WorkerError(
            f"data dir {path} is in use by another worker (pid {held.holder}): under exactly_once "
            f"the worker id kept there ({path / 'worker-id'}) names the transactional id, and "
            "two workers with one id fence each other; give each worker its own data dir "
            "(--datadir, the datadir setting) or its own worker_id setting"
        ) from None
    try:
        yield transactional_id(settings)
    finally:
        pidlock.release(fd)


class TransactionalCommitter(Committer):
    """The commit loop of an exactly_once worker (see the module docstring).

    Args:
        inboxes: gives the agents' topic inboxes (held during a commit).
        quiesce_timeout: how long a commit waits for the events in flight
            to finish; a periodic commit is postponed after that.
        on_failure: called with the error when the transaction failed and the
            worker must stop (from a rebalance callback, which cannot raise).
        **kwargs: as for :class:`~streamtrio._commit.Committer`.
    """

    def __init__(
        self,
        *,
        inboxes: Callable[[], Iterable[Inbox[Any]]],
        stepping: Callable[[], bool],
        quiesce_timeout: float,
        on_failure: Callable[[BaseException], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._inboxes = inboxes
        self._stepping = stepping
        self._quiesce_timeout = quiesce_timeout
        self._on_failure = on_failure
        #: the error that ended transactional processing (nothing is committed after it)
        self.failed: BaseException | None = None
        self._transactions = 0
        self._aborted = 0
        self._postponed = 0
        self._held_at: float | None = None
        self._pauses = 0
        self._pause_total = 0.0
        self._pause_max = 0.0

    @property
    def producer(self) -> Producer:
        return self._producer

    # -- the gate ---------------------------------------------------------------

    async def _hold(self) -> bool:
        """Hold the inboxes and wait until no agent is executing a step; ``False``
        after the quiesce timeout.

        Events an agent holds *across* steps (a ``take()`` batch still being
        collected, ``noack()`` events not acked yet) are not waited for: their
        offsets are simply not committed by this transaction.
        """
        started = trio.current_time()
        for inbox in self._inboxes():
            inbox.hold()
        try:
            with trio.move_on_after(self._quiesce_timeout):
                # Steps notify nobody (they are on the hot path); polling, only
                # while a commit waits, keeps them cheap.
                while self._stepping():  # noqa: ASYNC110
                    await trio.sleep(_QUIESCE_POLL)
                return True
            return False
        finally:
            self._held_at = started

    def _release(self) -> None:
        for inbox in self._inboxes():
            inbox.release()
        if self._held_at is not None:
            pause = trio.current_time() - self._held_at
            self._held_at = None
            self._pauses += 1
            self._pause_total += pause
            self._pause_max = max(self._pause_max, pause)

    # -- commits --------------------------------------------------------------------

    async def prepare(
        self, tps: Collection[TP] | None = None, *, offsets: Mapping[TP, int] | None = None
    ) -> dict[TP, int]:
        """On revoke: commit the transaction with ``offsets`` (the revoked
        partitions' frontiers) and every other partition's frontier.

        Returns nothing for the transport to commit: the transaction did. A
        failure does not raise (a rebalance callback must return): the
        transaction is aborted and the worker told to stop.
        """
        async with self._lock:
            if self.failed is not None:
                return {}
            try:
                if not await self._hold():
                    busy = ", ".join(str(tp) for tp in sorted(self._in_flight()))
                    raise TransactionError(
                        f"rebalance: agents still executing a step (events in flight on {busy}) after "
                        f"{self._quiesce_timeout:.1f}s; the transaction is aborted, their "
                        "partitions restart from the last committed offsets"
                    )
                await self._commit_transaction(offsets or {})
            except StreamtrioError as exc:
                await self._fail(exc)
                self._on_failure(exc)
            finally:
                self._release()
        return {}

    async def prepare_revoked(self, offsets: Mapping[TP, int]) -> dict[TP, int]:
        # prepare() takes the lock itself.
        return await self.prepare(offsets=offsets)

    async def commit(
        self, tps: Collection[TP] | None = None, *, deadline: float | None = None
    ) -> dict[TP, int]:
        """Commit the transaction now with every partition's frontier (``tps`` is ignored:
        a transaction covers the whole worker). Returns the offsets committed.

        ``deadline`` is not used here: the caller bounds the transaction commit.

        Postponed (returns ``{}``) when events stay in flight longer than the
        quiesce timeout; while the worker stops, that aborts the transaction.

        Raises:
            ProducerFencedError: a newer producer with our transactional id exists.
            TransactionError: the transaction failed and was aborted.
        """
        async with self._lock:
            if self.failed is not None:
                return {}
            try:
                if not await self._hold():
                    self._postponed += 1
                    busy = ", ".join(str(tp) for tp in sorted(self._in_flight()))
                    log.warning(
                        "commit postponed: agents still executing a step (events in flight on %s) "
                        "after %.1fs (a transaction never holds half a step)",
                        busy,
                        self._quiesce_timeout,
                    )
                    return {}
                return await self._commit_transaction({})
            except StreamtrioError as exc:
                await self._fail(exc)
                raise
            finally:
                self._release()

    async def _commit_transaction(self, revoked: Mapping[TP, int]) -> dict[TP, int]:
        """Commit every partition's frontier (``revoked``: the frontiers of partitions
        already detached from the inboxes) with what was produced.

        The frontiers are read after the flush: an event whose outputs were
        still in flight becomes done (or not) only with their delivery.
        """
        producer = self._producer
        await producer.flush()
        offsets = {**self._frontiers(None), **revoked}
        todo = {tp: off for tp, off in offsets.items() if off > self.committed.get(tp, -1)}
        for participant in self.participants:
            await participant.prepare_commit(todo)
        await producer.flush()
        if todo and self._consumer is not None:
            metadata = await self._consumer.group_metadata()
            await producer.send_offsets_to_transaction(todo, metadata)
        await producer.commit_transaction()
        self._transactions += 1
        # Only now, with the transaction committed, do the tables persist.
        for participant in self.participants:
            await participant.complete_commit(todo)
        if todo:
            self.mark_committed(todo)
        return todo

    async def _fail(self, error: BaseException) -> None:
        """Abort the transaction and drop the uncommitted table state."""
        if self.failed is None:
            self.failed = error
        with trio.move_on_at(self._until(), shield=True):
            if not isinstance(error, ProducerFencedError):
                try:
                    await self._producer.abort_transaction()
                except TransportError as exc:
                    log.error("cannot abort the transaction: %s", exc)
            for participant in self.participants:
                await participant.abort_commit()
        self._aborted += 1
        log.error("transaction aborted: %s", error)

    async def abort(self, error: BaseException) -> None:
        """The worker stops because of ``error``: abort, roll back, commit nothing more."""
        async with self._lock:
            if self.failed is None:
                await self._fail(error)

    async def finish(self, *, graceful: bool) -> None:
        """Before the producer closes: commit what was sent since the last commit
        (outside any event: timers, the cluster map) when the worker stopped
        gracefully, else abort it."""
        with trio.move_on_at(self._until(), shield=True):
            async with self._lock:
                try:
                    if graceful and self.failed is None:
                        await self._producer.commit_transaction()
                    elif not isinstance(self.failed, ProducerFencedError):
                        await self._producer.abort_transaction()
                except TransportError as exc:
                    log.warning("closing the transaction: %s", exc)

    def _until(self) -> float:
        """When aborting or finishing must give up: ``_GRACE`` from now, or the close deadline."""
        until = trio.current_time() + _GRACE
        return until if self.close_by is None else min(until, self.close_by)

    def statistics(self) -> CommitStatistics:
        return dataclasses.replace(
            super().statistics(),
            transactions=self._transactions,
            aborted=self._aborted,
            postponed=self._postponed,
            pauses=self._pauses,
            pause_total=self._pause_total,
            pause_max=self._pause_max,
        )
