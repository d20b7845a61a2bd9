"""The commit loop: commits, per partition, the offset below which every event is acked.

A commit happens in this order (rule 5 of ARCHITECTURE.md):

1. snapshot the frontier of each partition (every event below it is acked);
2. let the participants (tables) produce what those events changed;
3. flush the producer: every sink, changelog and ``send`` message produced
   so far is delivered;
4. let the participants persist (tables write LMDB);
5. commit the snapshot to the group.

So an offset is committed only after everything the events below it produced
is on the broker, and never past an event still in flight.

Under ``processing_guarantee="exactly_once"`` the worker uses
:class:`~streamtrio._transactions.TransactionalCommitter` instead: the same
steps inside a Kafka transaction, with the offsets committed by the
transaction rather than by the consumer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

import trio

from ._exceptions import CommitError
from ._transports.base import Consumer, Producer
from ._types import TP

__all__ = ["CommitParticipant", "CommitStatistics", "Committer"]

log = logging.getLogger(__name__)

#: A partition whose frontier has not moved for this long while it has events
#: in flight is reported as stalled.
STALL_AFTER = 30.0
#: A commit step waiting on the broker says so after this long, and again at this interval.
REPORT_WAIT_EVERY = 10.0
#: A retriable commit error is retried within at least this window (or the commit interval).
_RETRY_WINDOW = 2.0
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 1.0

T = TypeVar("T")


class CommitParticipant(Protocol):
    """Something that must act at each commit (the table manager)."""

    async def prepare_commit(self, offsets: Mapping[TP, int]) -> None:
        """Produce what the acked events changed (before the producer flush)."""
        ...

    async def complete_commit(self, offsets: Mapping[TP, int]) -> None:
        """Persist it (after the flush, before the offsets are committed)."""
        ...

    async def abort_commit(self) -> None:
        """The transaction was aborted (exactly_once): forget every change not committed."""
        ...


@dataclass(frozen=True, slots=True)
class CommitStatistics:
    """What the commit loop has done.

    Attributes:
        committed: the last committed offset per partition.
        commits: how many commits succeeded.
        last_commit_at: trio time of the last successful commit.
        stalled: partitions whose frontier has not moved for ``STALL_AFTER``
            seconds while events were in flight, with the offset they are stuck at.
        transactions: transactions committed (exactly_once).
        aborted: transactions aborted (exactly_once).
        postponed: commits postponed because agents stayed in a step (exactly_once).
        pauses: times intake was held for a transaction commit (exactly_once).
        pause_total: seconds intake was held for transaction commits in all.
        pause_max: the longest such hold, in seconds.
        behind: partitions whose committed offset has not moved for
            ``STALL_AFTER`` seconds while their end moved on (their lag grew),
            with the committed offset they are stuck at.
    """

    committed: dict[TP, int]
    commits: int
    last_commit_at: float | None
    stalled: dict[TP, int]
    transactions: int = 0
    aborted: int = 0
    postponed: int = 0
    pauses: int = 0
    pause_total: float = 0.0
    pause_max: float = 0.0
    behind: dict[TP, int] = dataclasses.field(default_factory=dict)


class Committer:
    """Runs the commit sequence, on a timer and on demand.

    Args:
        frontiers: gives the committable offset per partition (optionally
            restricted to some partitions).
        in_flight: gives the partitions that have events in flight.
        consumer: the group consumer (``None`` only for a transactional
            committer of a worker without a group).
        producer: the app's producer.
        interval: seconds between commits.
        generation: gives the rebalance generation; a commit that fails
            because a rebalance moved its partitions is not an error.
    """

    def __init__(
        self,
        *,
        frontiers: Callable[[Collection[TP] | None], dict[TP, int]],
        in_flight: Callable[[], set[TP]],
        consumer: Consumer | None,
        producer: Producer,
        interval: float,
        generation: Callable[[], int],
    ) -> None:
        self._frontiers = frontiers
        self._in_flight = in_flight
        self._consumer = consumer
        self._producer = producer
        self._interval = interval
        self._generation = generation
        self.participants: list[CommitParticipant] = []
        #: trio time by which a stopping worker's last commit steps must be over
        self.close_by: float | None = None
        self.committed: dict[TP, int] = {}
        self._commits = 0
        self._last_commit_at: float | None = None
        self._lock = trio.Lock()
        # True while the lock holder waits for the group commit (the consumer
        # thread): a revoke running meanwhile must not wait for the lock.
        self._committing_offsets = False
        self._progress: dict[TP, tuple[int, float]] = {}
        # per partition: (committed offset, since when, the end offset then)
        self._commit_progress: dict[TP, tuple[int, float, int]] = {}
        self._behind: dict[TP, int] = {}
        self._stalled: dict[TP, int] = {}

    async def prepare(
        self, tps: Collection[TP] | None = None, *, offsets: Mapping[TP, int] | None = None
    ) -> dict[TP, int]:
        """Steps 1-4: everything but the group commit. Returns the offsets to commit.

        ``offsets`` overrides the snapshot (used on revoke, where the lanes
        are already detached from the inboxes).
        """
        if offsets is None:
            offsets = self._frontiers(tps)
        todo = {tp: off for tp, off in offsets.items() if off > self.committed.get(tp, -1)}
        for participant in self.participants:
            await participant.prepare_commit(todo)
        await self._reporting(self._delivery_wait, self._producer.flush)
        for participant in self.participants:
            await participant.complete_commit(todo)
        return todo

    async def prepare_revoked(self, offsets: Mapping[TP, int]) -> dict[TP, int]:
        """:meth:`prepare` for partitions being revoked, serialized with the periodic commits.

        A periodic commit in progress finishes first, so its older snapshot
        cannot land after this one. If it is already waiting for the group
        commit, that commit is queued on the consumer thread before this
        revoke's (and this revoke runs inside that thread's wait), so this one
        goes ahead.
        """
        if self._committing_offsets:
            return await self.prepare(offsets=offsets)
        async with self._lock:
            return await self.prepare(offsets=offsets)

    def _delivery_wait(self) -> str:
        return f"the delivery of {self._producer.statistics().queued} produced message(s)"

    async def _reporting(self, what: Callable[[], str], step: Callable[[], Awaitable[T]]) -> T:
        """Await ``step``; while it takes longer than ``REPORT_WAIT_EVERY``, say what it waits for."""

        async def report() -> None:
            started = trio.current_time()
            while True:
                await trio.sleep(REPORT_WAIT_EVERY)
                log.warning(
                    "commit: waiting %.0fs for %s (is the broker reachable?); nothing is "
                    "committed meanwhile",
                    trio.current_time() - started,
                    what(),
                )

        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            try:
                result = await step()
            except Exception as exc:
                # Raised below as itself, not wrapped in the nursery's exception group.
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return result

    async def commit(
        self, tps: Collection[TP] | None = None, *, deadline: float | None = None
    ) -> dict[TP, int]:
        """Run the whole commit sequence now. Returns what was committed.

        A retriable group-commit error (the coordinator moved or did not
        answer) is retried with backoff within the commit interval (at least
        two seconds), or until ``deadline`` (a trio time) when one is given;
        after that, a periodic commit gives up until the next interval.

        Raises:
            CommitError: the group commit failed with a non-retriable error (and
                no rebalance explains it), or, with a ``deadline``, did not
                succeed before it.
        """
        async with self._lock:
            generation = self._generation()
            token = self._consumer.commit_token() if self._consumer is not None else None
            todo = await self.prepare(tps)
            if not todo:
                return {}
            if self._generation() != generation:
                # A rebalance (a loss) since the offsets were read: what the
                # events below them wrote may have been discarded with it.
                log.info("commit skipped: partitions moved in a rebalance while it was prepared")
                return {}
            self._committing_offsets = True
            try:
                return await self._commit_offsets(todo, generation, deadline, token)
            finally:
                self._committing_offsets = False

    async def _commit_offsets(
        self, todo: dict[TP, int], generation: int, deadline: float | None, token: object = None
    ) -> dict[TP, int]:
        assert self._consumer is not None
        consumer = self._consumer
        retry_until = (
            deadline if deadline is not None else trio.current_time() + max(self._interval, _RETRY_WINDOW)
        )
        backoff = _FIRST_BACKOFF
        attempt = 1
        described = ", ".join(f"{tp}@{off}" for tp, off in sorted(todo.items()))
        while True:
            wait = None if deadline is None else max(deadline - trio.current_time(), 0.05)
            try:
                await self._reporting(
                    lambda: f"the group coordinator to accept the commit of {described}",
                    partial(consumer.commit, todo, answer_within=wait, token=token),
                )
            except CommitError as exc:
                if self._generation() != generation:
                    log.info("commit skipped: partitions moved in a rebalance (%s)", exc)
                    return {}
                if not exc.retriable:
                    raise
                if trio.current_time() + backoff >= retry_until:
                    log.warning(
                        "commit failed %d time(s) with a retriable error; %s: %s",
                        attempt,
                        "giving up" if deadline is not None else "trying again at the next commit",
                        exc,
                    )
                    if deadline is not None:
                        raise
                    return {}
                log.warning("commit failed (attempt %d), retrying in %.1fs: %s", attempt, backoff, exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                attempt += 1
                continue
            self.mark_committed(todo)
            return todo

    def mark_committed(self, offsets: Mapping[TP, int]) -> None:
        self.committed.update(offsets)
        self._commits += 1
        self._last_commit_at = trio.current_time()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("committed %s", {str(tp): off for tp, off in offsets.items()})

    def forget(self, tps: Collection[TP]) -> None:
        """Partitions were revoked: drop what is known about them."""
        for tp in tps:
            self.committed.pop(tp, None)
            self._progress.pop(tp, None)
            self._stalled.pop(tp, None)
            self._commit_progress.pop(tp, None)
            self._behind.pop(tp, None)

    def _check_stalls(self) -> None:
        now = trio.current_time()
        in_flight = self._in_flight()
        frontiers = self._frontiers(None)
        for tp, frontier in frontiers.items():
            previous = self._progress.get(tp)
            if previous is None or previous[0] != frontier or tp not in in_flight:
                self._progress[tp] = (frontier, now)
                if self._stalled.pop(tp, None) is not None:
                    log.warning("partition %s is moving again (offset %d)", tp, frontier)
                continue
            if now - previous[1] >= STALL_AFTER and tp not in self._stalled:
                self._stalled[tp] = frontier
                log.warning(
                    "partition %s is stalled: the event at offset %d has been in flight for %.0fs "
                    "(a slow or stuck agent; nothing past it can be committed)",
                    tp,
                    frontier,
                    now - previous[1],
                )

    def _check_behind(self) -> None:
        """Say so when a partition's committed offset stands still while its end moves on:
        nothing is processed from it (a partition left paused, a fetcher that
        does not get its messages, an agent that never asks for events)."""
        if self._consumer is None:
            return
        ends = self._consumer.high_watermarks()
        now = trio.current_time()
        frontiers = self._frontiers(None)
        for tp, end in ends.items():
            done = self.committed.get(tp, frontiers.get(tp))
            if done is None:
                continue
            seen = self._commit_progress.get(tp)
            if seen is None or seen[0] != done:
                self._commit_progress[tp] = (done, now, end)
                if self._behind.pop(tp, None) is not None:
                    log.warning("partition %s is committed again (offset %d)", tp, done)
                continue
            if tp not in self._behind and end > seen[2] and now - seen[1] >= STALL_AFTER:
                self._behind[tp] = done
                log.warning(
                    "partition %s: the committed offset %d has not moved for %.0fs while the "
                    "partition grew to %d (lag %d): nothing is processed from it (a paused "
                    "partition, a fetcher that gets nothing, or an agent that never asks for events)",
                    tp,
                    done,
                    now - seen[1],
                    end,
                    end - done,
                )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit every ``interval`` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            await self.commit()
            self._check_stalls()
            self._check_behind()

    def statistics(self) -> CommitStatistics:
        return CommitStatistics(
            committed=dict(self.committed),
            commits=self._commits,
            last_commit_at=self._last_commit_at,
            stalled=dict(self._stalled),
            behind=dict(self._behind),
        )
