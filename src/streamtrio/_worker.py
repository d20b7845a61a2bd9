"""The worker: one trio nursery tree per process.

::

    Worker.serve                       root nursery; stop and crash handling
    ├── producer                       (transport's open_producer)
    ├── consumer                       (transport's open_consumer; rebalance listener = Worker)
    └── work nursery
        ├── fetcher                    consumer batches -> per-partition lanes
        ├── commit loop                Committer.serve
        ├── agents                     each a nursery of actors
        ├── services, timers, tasks
        └── ...

Shutdown (a stop request, a signal, or a crash): stop intake, let in-flight
events finish, commit, all under ``shutdown_timeout`` with a shield; then
cancel the work nursery, leave the group, flush and close the producer. A
crash is re-raised after that, so ``streamtrio run`` exits non-zero.

Under ``processing_guarantee="exactly_once"`` (:mod:`._transactions`) the
producer is transactional, the commit loop commits transactions, and a crash
aborts the open transaction instead of committing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._commit import CommitParticipant, Committer
from ._exceptions import StreamtrioError, TopicError, WorkerError
from ._gc import raised_gc_threshold
from ._lanes import Inbox, Lane
from ._stream import ChannelSource, Source, TopicSource
from ._timers import serve_service, serve_task, serve_timer
from ._topic import Topic
from ._transactions import TransactionalCommitter, claimed_transactional_id
from ._transports.base import Consumer, Producer
from ._types import TP, Message

if TYPE_CHECKING:
    from ._app import App

__all__ = ["Worker"]

log = logging.getLogger(__name__)

AssignHook = Callable[[frozenset[TP]], Awaitable[None]]

#: Past the stop deadline (``shutdown_timeout`` after the stop request), leaving
#: the group and closing the clients get at most this long: the whole stop
#: takes at most ``shutdown_timeout`` plus this and the process's own exit.
CLOSE_MARGIN = 1.0
#: While a starting worker has no assignment, it says so this often (seconds).
JOIN_REPORT_EVERY = 5.0
#: What a revoke while stopping may take when the stop deadline has passed.
_REVOKE_AFTER_DEADLINE = 0.2
#: The most of ``shutdown_timeout`` kept from the drain for the final commit.
_COMMIT_RESERVE = 2.0


class Component(Protocol):
    """A part of the worker with a lifetime of its own (the table manager, the web server).

    ``attach`` runs before the consumer joins the group (register rebalance
    hooks and commit participants there). ``serve`` is started next, in a
    nursery that outlives the consumer, so a component still runs while the
    group is left and the last offsets are committed; it reports readiness
    with ``task_status.started()`` and is cancelled after the consumer closed.
    """

    name: str

    def attach(self, worker: Worker) -> None: ...

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None: ...


def _offset_of(message: Message) -> int:
    return message.offset


class Worker:
    """Runs an app: consumes its topics, runs its agents, commits what they finished.

    Use :func:`streamtrio.serve` (inside trio) or :func:`streamtrio.run`.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.transport = app._transport()
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.committer: Committer | None = None
        self.exactly_once = app.conf.processing_guarantee == "exactly_once"
        self.assigned: set[TP] = set()
        self.generation = 0
        #: set when an assignment was received and its assign hooks all finished
        self._settled = trio.Event()
        self.error: BaseException | None = None
        self.stopping = False
        self.ready = False
        #: trio time by which the stop must be done (set by the first stop request)
        self.deadline: float | None = None
        #: what a stop left undone (uncommitted offsets, undelivered messages);
        #: empty after a complete stop. ``streamtrio run`` exits 1 when it is not.
        self.unfinished: list[str] = []
        self._stop: trio.Event | None = None
        #: the start, until the worker is ready: a stop before then cancels it
        self._starting: trio.CancelScope | None = None
        self._topic_inboxes: list[tuple[Topic[Any], Inbox[Message]]] = []
        self._dynamic_topics: list[Topic[Any]] = []
        self._channel_inboxes: list[Inbox[Any]] = []
        self._routes: dict[str, list[Inbox[Message]]] = {}
        self._paused: set[TP] = set()
        #: assignments whose hooks (table recovery) still run, in the hooks nursery
        self._assigning: list[_Assignment] = []
        self._hooks_nursery: trio.Nursery | None = None
        self._fetch_scope: trio.CancelScope | None = None
        self._held_for_producer: list[Inbox[Message]] = []
        #: trio time since which no source partition is assigned (None: some are)
        self.unassigned_since: float | None = None
        #: awaited with newly assigned partitions before they are resumed (tables recover here)
        self.on_assign_hooks: list[AssignHook] = []
        #: awaited with revoked partitions after their last commit (tables release them);
        #: also with lost partitions, after ``on_lost_hooks``
        self.on_revoke_hooks: list[AssignHook] = []
        #: awaited first with lost partitions (tables discard what they had not persisted)
        self.on_lost_hooks: list[AssignHook] = []
        #: act at every commit (tables produce their changelog, then persist)
        self.commit_participants: list[CommitParticipant] = []

    # -- control --------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to shut down gracefully, within ``shutdown_timeout`` from now."""
        if self._stop is not None:
            if self.deadline is None:
                self.deadline = trio.current_time() + self.app.conf.shutdown_timeout
            self._stop.set()
            starting = self._starting
            if starting is not None and not starting.cancel_called:
                # Not started yet (connecting, creating topics, opening the
                # clients and stores): nothing was processed, so nothing is to
                # drain or commit; the start is abandoned and what it opened closed.
                if self.error is None:
                    log.info("stopped while starting: nothing was processed")
                starting.cancel()

    def _close_by(self) -> float:
        """trio time by which leaving the group and closing the clients must be over."""
        if self.deadline is None:
            self.deadline = trio.current_time() + self.app.conf.shutdown_timeout
        return self.deadline + CLOSE_MARGIN

    def crash(self, error: BaseException) -> None:
        """Stop because of ``error``; the first error is re-raised by :meth:`serve`."""
        if self.error is None:
            self.error = error
            log.error("worker stopping because of an error: %s", error, exc_info=error)
        self.stop()

    async def _guard(self, what: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            await fn()
        except Exception as exc:
            error = exc if isinstance(exc, StreamtrioError) else WorkerError(f"{what} failed: {exc!r}")
            if error is not exc:
                error.__cause__ = exc
            self.crash(error)

    # -- topology -------------------------------------------------------------

    def _source_topics(self) -> list[Topic[Any]]:
        return [agent.channel for agent in self.app.agents.values() if isinstance(agent.channel, Topic)]

    def _subscription(self) -> list[str]:
        if not self.app._needs_group():
            return []
        names: list[str] = [self.app.leader_topic_name]
        for topic in [*self._source_topics(), *self._dynamic_topics]:
            if topic.pattern is not None:
                names.append(f"^(?:{topic.pattern.pattern})$")
            else:
                names.extend(n for n in topic.topics if n not in names)
        return names

    async def _declare_topics(self) -> None:
        await self.app.declare_topics()
        counts = await self.transport.partition_counts([n for t in self._source_topics() for n in t.topics])
        for topic in self._source_topics():
            names = [n for n in topic.topics if n in counts]
            if len({counts[n] for n in names}) > 1:
                layout = ", ".join(f"{n} has {counts[n]}" for n in names)
                raise TopicError(
                    f"topics consumed together must be co-partitioned (equal partition counts): {layout}"
                )
        self._partition_counts = counts

    def _route(self, topic_name: str) -> list[Inbox[Message]]:
        inboxes = self._routes.get(topic_name)
        if inboxes is None:
            inboxes = self._routes[topic_name] = [
                inbox for topic, inbox in self._topic_inboxes if topic.matches(topic_name)
            ]
        return inboxes

    def _subscribe_agents(self) -> list[tuple[Any, Source[Any]]]:
        plan: list[tuple[Any, Source[Any]]] = []
        for agent in self.app.agents.values():
            channel = agent.channel
            source: Source[Any]
            if isinstance(channel, Topic):
                inbox = self._new_inbox()
                self._topic_inboxes.append((channel, inbox))
                source = TopicSource(self.app, inbox, channel.schema, agent=agent.name)
            else:
                channel_inbox = channel._subscribe()
                self._channel_inboxes.append(channel_inbox)
                source = ChannelSource(channel_inbox)
            plan.append((agent, source))
        return plan

    def _new_inbox(self) -> Inbox[Message]:
        return Inbox(_offset_of, high_water=self.app.conf.stream_buffer_maxsize, flow=self)

    def _source_inboxes(self) -> list[Inbox[Message]]:
        return [inbox for _t, inbox in self._topic_inboxes]

    async def add_subscription(self, topic: Topic[Any]) -> Inbox[Message]:
        """Subscribe one more topic at run time (group_by); the group rebalances.

        Returns the inbox its partitions will be fed to once assigned.
        """
        if self.consumer is None:
            raise WorkerError(f"cannot subscribe {topic.label!r}: this worker has no consumer")
        await self.transport.create_topics([topic.spec(name) for name in topic.topics])
        inbox = self._new_inbox()
        self._topic_inboxes.append((topic, inbox))
        self._dynamic_topics.append(topic)
        self._routes.clear()
        for tp in self.assigned:
            if topic.matches(tp.topic):
                inbox.add_lane(tp)
        await self.consumer.subscribe(self._subscription())
        log.info("subscribed %s", topic.label)
        return inbox

    # -- flow control (lanes call these) ----------------------------------------

    def on_lane_full(self, tp: TP | None) -> None:
        if tp is not None and tp not in self._paused and self.consumer is not None:
            self._paused.add(tp)
            self.consumer.pause_nowait([tp])

    def on_lane_drained(self, tp: TP | None) -> None:
        if tp is None or tp not in self._paused or self.consumer is None:
            return
        for inbox in self._route(tp.topic):
            lane = inbox.lanes.get(tp)
            if lane is not None and len(lane.buffer) > lane.low_water:
                return
        self._paused.discard(tp)
        if tp not in self._recovering:
            self.consumer.resume_nowait([tp])

    # -- the rebalance listener ------------------------------------------------

    @property
    def _recovering(self) -> frozenset[TP]:
        """Partitions whose assign hooks (table recovery) still run: they stay paused."""
        return frozenset(tp for job in self._assigning for tp in job.tps)

    def _log_partitions(self, what: str, tps: Collection[TP]) -> None:
        """Log ``what % partitions`` at INFO for the app's topics; the internal
        topics' (the leader topic, the tables' writes topics) only at DEBUG."""
        internal = self._internal_topics()
        if mine := [tp for tp in tps if tp.topic not in internal]:
            log.info(what, _tps(mine))
        if theirs := [tp for tp in tps if tp.topic in internal]:
            log.debug(what, _tps(theirs))

    def _internal_topics(self) -> frozenset[str]:
        """The consumed topics streamtrio keeps for itself: the leader topic and the
        tables' writes topics (see docs/tables.md, "Writes outside events")."""
        tables = self.app.tables.values()
        return frozenset(
            [self.app.leader_topic_name] + [t.writes_topic_name for t in tables if t.writes_topic is not None]
        )

    def source_partitions(self) -> set[TP]:
        """Assigned partitions of the topics the agents consume (not the leader topic;
        the tables' writes topics included: their agents apply them)."""
        leader = self.app.leader_topic_name
        return {tp for tp in self.assigned if tp.topic != leader}

    def _note_assignment(self) -> None:
        if self.source_partitions():
            self.unassigned_since = None
        elif self.unassigned_since is None:
            self.unassigned_since = trio.current_time()

    async def _announce_joining(self) -> None:
        """Say, every ``JOIN_REPORT_EVERY`` seconds, that the group has not assigned anything yet."""
        started = trio.current_time()
        group = self.app.conf.appid
        log.info("joining group %r (waiting for assignment)", group)
        while self.generation == 0 and not self.stopping:
            await trio.sleep(JOIN_REPORT_EVERY)
            if self.generation == 0 and not self.stopping:
                log.warning(
                    "joining group %r: still waiting for an assignment after %.0fs (the group is "
                    "rebalancing; a member that does not rejoin holds it up to its max.poll.interval)",
                    group,
                    trio.current_time() - started,
                )

    async def _watch_membership(self) -> None:
        """Say so, every ``commit_interval``, while a worker with subscriptions has had no
        partition for longer than three session timeouts."""
        conf = self.app.conf
        quiet_for = 3 * conf.broker_session_timeout
        while True:
            await trio.sleep(max(conf.commit_interval, 1.0))
            since = self.unassigned_since
            if since is None or self.stopping:
                continue
            waited = trio.current_time() - since
            if waited >= quiet_for:
                log.warning(
                    "group %r: no partition assigned to this worker for %.0fs (last rebalance generation "
                    "%d): more workers than partitions, or the group is stuck in a rebalance",
                    conf.appid,
                    waited,
                    self.generation,
                )

    async def on_partitions_assigned(self, assigned: frozenset[TP]) -> None:
        """New partitions: they stay paused while the assign hooks (table recovery) run
        in a task of their own, so the rebalance callback returns at once and the
        consumer goes on taking part in the group (a long recovery never holds a
        later rebalance up, nor costs the member its membership)."""
        self.generation += 1
        self.assigned |= assigned
        if self._settled.is_set():
            self._settled = trio.Event()
        self._note_assignment()  # assigned, if still recovering: the recovery reports its waits
        for tp in assigned:
            for inbox in self._route(tp.topic):
                inbox.add_lane(tp)
        self._start_assignment(assigned)

    async def wait_assigned(self) -> None:
        """Wait until the group assigned this worker its partitions (maybe none) and
        their tables are recovered; again after each new assignment."""
        while True:
            settled = self._settled
            await settled.wait()
            if settled is self._settled:
                return

    def _start_assignment(self, tps: frozenset[TP]) -> None:
        job = _Assignment(tps)
        self._assigning.append(job)
        nursery = self._hooks_nursery
        if nursery is None:  # not serving (a transport test drives the listener)
            raise WorkerError("partitions assigned to a worker that is not running")
        nursery.start_soon(self._guard, "recovering assigned partitions", partial(self._assign, job))

    async def _assign(self, job: _Assignment) -> None:
        """Run the assign hooks for ``job``, then resume its partitions (unless revoked meanwhile)."""
        try:
            with job.scope:
                for hook in self.on_assign_hooks:
                    await hook(job.tps)
        finally:
            self._assigning.remove(job)
            job.finished.set()
            if not self._assigning:
                self._settled.set()
        if job.scope.cancel_called:
            return  # revoked or lost meanwhile: see _settle_assignments
        tps = job.tps & self.assigned
        self._paused -= job.tps
        self._note_assignment()
        if self.consumer is not None and tps:
            self.consumer.resume_nowait(tps)
        self._log_partitions("assigned %s", job.tps)

    async def _settle_assignments(self, leaving: frozenset[TP]) -> None:
        """Partitions are revoked or lost: stop the assign hooks still running for them
        (their recovery is cancelled: what it stored is kept, and resumed by the
        next owner or the next assignment), and start again for the others."""
        pending = [job for job in self._assigning if job.tps & leaving]
        for job in pending:
            job.scope.cancel()
        for job in pending:
            await job.finished.wait()
        for job in pending:
            rest = job.tps - leaving
            if rest:
                self._start_assignment(rest)

    async def on_partitions_revoked(self, revoked: frozenset[TP]) -> Mapping[TP, int]:
        self.generation += 1
        await self._settle_assignments(revoked)
        lanes: list[Lane[Message]] = []
        for tp in revoked:
            for inbox in self._route(tp.topic):
                lane = inbox.revoke_lane(tp)
                if lane is not None:
                    lanes.append(lane)
        now = trio.current_time()
        drain_until = now + self.app.conf.rebalance_drain_timeout
        if self.stopping:
            # After the final commit: only what was produced since, briefly.
            assert self.deadline is not None
            drain_until = min(drain_until, max(self.deadline, now + _REVOKE_AFTER_DEADLINE))
        else:
            await self._wait_idle(lanes, drain_until, "rebalance")
        offsets: dict[TP, int] = {}
        for lane in lanes:
            frontier = lane.frontier()
            if frontier is not None and lane.tp is not None:
                offsets[lane.tp] = min(frontier, offsets.get(lane.tp, frontier))
        todo: dict[TP, int] = {}
        if self.committer is not None:
            with trio.move_on_at(drain_until, shield=True) as scope:
                # exactly_once: commits the transaction, returns nothing to commit
                todo = await self.committer.prepare_revoked(offsets)
            if scope.cancelled_caught:
                log.warning(
                    "revoked %s: what their events produced was not delivered in time; "
                    "not committing %s",
                    _tps(revoked),
                    _offsets(offsets),
                )
            self.committer.forget(revoked)
        for hook in self.on_revoke_hooks:
            await hook(revoked)
        self.assigned -= revoked
        self._paused -= revoked
        self._note_assignment()
        if self.exactly_once:
            self._log_partitions("revoked %s (offsets committed in the transaction)", revoked)
        else:
            self._log_partitions("revoked %s" + (f" (committing {_offsets(todo)})" if todo else ""), revoked)
        return todo

    async def on_partitions_lost(self, lost: frozenset[TP]) -> None:
        """Partitions were taken away without a handover (the session timed out, the
        member was fenced): another worker may own them already (rule 8).

        Nothing more is written for them: their buffered events are dropped, the
        events in flight are cut off (what they still write to tables is
        discarded, and they are never committed), the tables drop what they had
        not persisted and the changelog records still queued in the producer,
        and no offset is committed. The next owner processes them again from the
        last commit and rebuilds their tables from the changelog.
        """
        self.generation += 1
        await self._settle_assignments(lost)
        busy: dict[TP, int] = {}
        for tp in lost:
            for inbox in self._route(tp.topic):
                lane = inbox.revoke_lane(tp)
                frontier = lane.frontier() if lane is not None else None
                if lane is not None and frontier is not None and lane.unacked() > 0:
                    busy[tp] = min(frontier, busy.get(tp, frontier))
        if self.committer is not None:
            self.committer.forget(lost)
        for hook in self.on_lost_hooks:
            await hook(lost)
        for hook in self.on_revoke_hooks:
            await hook(lost)
        self.assigned -= lost
        self._paused -= lost
        self._note_assignment()
        log.warning(
            "lost %s without a handover (session timeout or fencing): another worker may own them; "
            "nothing more is written or committed for them%s",
            _tps(lost),
            f" (events in flight cut off at {_offsets(busy)})" if busy else "",
        )

    async def _wait_idle(self, lanes: Collection[Lane[Any]], until: float, why: str) -> dict[TP, int]:
        """Wait (shielded, until trio time ``until``) until no event of ``lanes`` is in flight.

        Returns the partitions still busy then, with the offset of their oldest
        unfinished event.
        """
        with trio.move_on_at(until, shield=True):
            # Acks happen on the hot path and notify nobody; polling here, only
            # during a rebalance or shutdown, keeps them cheap.
            while any(lane.unacked() > 0 for lane in lanes):  # noqa: ASYNC110
                await trio.sleep(0.005)
        busy: dict[TP, int] = {}
        for lane in lanes:
            frontier = lane.frontier()
            if lane.unacked() > 0 and lane.tp is not None and frontier is not None:
                busy[lane.tp] = min(frontier, busy.get(lane.tp, frontier))
        if busy:
            log.warning(
                "%s: events still in flight at %s; they will be processed again",
                why,
                _offsets(busy),
            )
        return busy

    # -- frontiers ---------------------------------------------------------------

    def frontiers(self, tps: Collection[TP] | None = None) -> dict[TP, int]:
        """The committable offset of each assigned partition (min over its subscribers)."""
        result: dict[TP, int] = {}
        for _topic, inbox in self._topic_inboxes:
            for tp, offset in inbox.frontiers(tps).items():
                current = result.get(tp)
                if current is None or offset < current:
                    result[tp] = offset
        return result

    def _stepping(self) -> bool:
        """An agent is executing a step, or a channel agent has work (exactly_once)."""
        if self.app._steps > 0:
            return True
        lanes = [lane for inbox in self._channel_inboxes for lane in inbox.lanes.values()]
        return any(lane.buffer or lane.unacked() > 0 for lane in lanes)

    def in_flight(self) -> set[TP]:
        busy: set[TP] = set()
        for _topic, inbox in self._topic_inboxes:
            for tp, lane in inbox.lanes.items():
                if tp is not None and lane.unacked() > 0:
                    busy.add(tp)
        return busy

    # -- the fetcher ---------------------------------------------------------------

    async def _fetch(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        route = self._route
        with trio.CancelScope() as scope:
            self._fetch_scope = scope
            while True:
                batch = await consumer.getmany()
                n = len(batch)
                i = 0
                while i < n:
                    first = batch[i]
                    topic = first.topic
                    partition = first.partition
                    j = i + 1
                    while j < n and batch[j].partition == partition and batch[j].topic == topic:
                        j += 1
                    run = batch if (i == 0 and j == n) else batch[i:j]
                    tp = TP(topic, partition)
                    for inbox in route(topic):
                        inbox.feed(tp, run, first.offset, batch[j - 1].offset)
                    i = j

    # -- running -------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` (or a crash); readiness is reported once agents run.

        Raises:
            StreamtrioError: the worker could not start, or stopped because of an error.
        """
        app = self.app
        self._stop = trio.Event()
        if app._worker is not None:
            raise WorkerError(f"app {app.conf.appid!r} is already running a worker")
        app._worker = self
        try:
            with trio.CancelScope() as self._starting:
                await self._serve(task_status)
        except BaseExceptionGroup as group:
            # A single start-up error (a port in use, an unreachable broker) is
            # raised as itself, not wrapped in the nurseries' exception groups.
            leaf = _single_error(group)
            if leaf is None:
                raise
            raise leaf from leaf.__cause__
        finally:
            self._starting = None
            self.ready = False
            app._worker = None
            app._producer = None
        if self.error is not None:
            raise self.error

    async def _serve(self, task_status: trio.TaskStatus[Worker]) -> None:
        app = self.app
        conf = app.conf
        await self._declare_topics()
        async with AsyncExitStack() as stack:
            stack.enter_context(raised_gc_threshold(conf.gc_threshold))
            txn_id = stack.enter_context(claimed_transactional_id(conf)) if self.exactly_once else None
            self.producer = await stack.enter_async_context(
                self.transport.open_producer(transactional_id=txn_id)
            )
            app._producer = self.producer
            self.producer.bound.on_full = self._producer_full
            self.producer.bound.on_room = self._producer_room
            if txn_id is not None:
                stack.push_async_callback(self._finish_transactions)
                log.info("exactly_once: transactional id %r", txn_id)
            components = await stack.enter_async_context(trio.open_nursery())
            # Unwinds before the nursery exits: the consumer has left by then.
            stack.callback(components.cancel_scope.cancel)
            # Assign hooks (table recovery) run here, outside the rebalance callback.
            self._hooks_nursery = components
            for component in app._components:
                component.attach(self)
                await components.start(component.serve, self)
            plan = self._subscribe_agents()
            subscription = self._subscription()
            if subscription:
                self.consumer = await stack.enter_async_context(
                    self.transport.open_consumer(group_id=conf.appid, topics=subscription, listener=self)
                )
            if self.exactly_once:
                # Without a group too: table writes still go out in transactions.
                self.committer = TransactionalCommitter(
                    inboxes=self._source_inboxes,
                    stepping=self._stepping,
                    quiesce_timeout=conf.rebalance_drain_timeout,
                    on_failure=self.crash,
                    frontiers=self.frontiers,
                    in_flight=self.in_flight,
                    consumer=self.consumer,
                    producer=self.producer,
                    interval=conf.commit_interval,
                    generation=lambda: self.generation,
                )
            elif self.consumer is not None:
                self.committer = Committer(
                    frontiers=self.frontiers,
                    in_flight=self.in_flight,
                    consumer=self.consumer,
                    producer=self.producer,
                    interval=conf.commit_interval,
                    generation=lambda: self.generation,
                )
            if self.committer is not None:
                self.committer.participants.extend(self.commit_participants)
            # However the work nursery ends, closing is bounded.
            stack.callback(self._bound_closing)
            async with trio.open_nursery() as work:
                for agent, source in plan:
                    await work.start(agent._serve, self, source)
                if self.consumer is not None:
                    work.start_soon(self._guard, "fetcher", self._fetch)
                if self.committer is not None:
                    work.start_soon(self._guard, "commit loop", self.committer.serve)
                if self.consumer is not None:
                    self._note_assignment()
                    work.start_soon(self._watch_membership)
                    work.start_soon(self._announce_joining)
                for service in app._services:
                    await work.start(serve_service, self, service)
                for timer in app._timers:
                    work.start_soon(serve_timer, self, timer)
                for task in app._tasks:
                    work.start_soon(serve_task, self, task)
                self.ready = True
                self._starting = None  # started: a stop now drains and commits
                log.info("%s", app._banner())
                task_status.started(self)
                assert self._stop is not None
                await self._stop.wait()
                await self._shutdown()
                work.cancel_scope.cancel()
        if self.producer is not None and self.producer.undelivered_at_close:
            self.unfinished.append(
                f"{self.producer.undelivered_at_close} produced message(s) not delivered before the deadline"
            )

    def _producer_full(self) -> None:
        """Backpressure from the producer: while it holds more undelivered bytes or
        messages than its bound, no event is handed out (lanes fill, partitions
        pause), so agents stop producing instead of growing the queue."""
        assert self.producer is not None
        bound = self.producer.bound
        log.warning(
            "producer queue full (%d messages, %d bytes undelivered; limits %d / %d: "
            "producer_max_queued_messages / producer_max_queued_bytes): holding intake until it drains",
            bound.messages,
            bound.bytes,
            bound.max_messages,
            bound.max_bytes,
        )
        self._held_for_producer = [inbox for _t, inbox in self._topic_inboxes]
        for inbox in self._held_for_producer:
            inbox.hold()

    def _producer_room(self) -> None:
        held, self._held_for_producer = self._held_for_producer, []
        for inbox in held:
            inbox.release()
        if held:
            log.info("producer queue drained: intake resumed")

    async def _shutdown(self) -> None:
        conf = self.app.conf
        self.stopping = True
        deadline = self._close_by() - CLOSE_MARGIN
        log.info(
            "stopping: draining in-flight events and committing (deadline %.1fs)",
            deadline - trio.current_time(),
        )
        pending: dict[TP, int] = {}
        with trio.move_on_at(deadline, shield=True) as scope:
            if self._fetch_scope is not None:
                self._fetch_scope.cancel()
            inboxes: list[Inbox[Any]] = [inbox for _t, inbox in self._topic_inboxes] + self._channel_inboxes
            for inbox in inboxes:
                inbox.close()
            lanes = [lane for inbox in inboxes for lane in inbox.lanes.values()]
            # The drain leaves part of the time to the final commit.
            reserve = min(max(0.2 * conf.shutdown_timeout, 0.1), _COMMIT_RESERVE)
            busy = await self._wait_idle(lanes, deadline - reserve, "shutdown")
            if busy:
                self.unfinished.append(f"not committed: events in flight at {_offsets(busy)}")
            if isinstance(self.committer, TransactionalCommitter) and self.error is not None:
                # Nothing of a failed run is committed: the restart resumes
                # from the last committed offsets and table state.
                await self.committer.abort(self.error)
            elif self.committer is not None:
                committed_before = self.committer.committed
                pending = {
                    tp: off for tp, off in self.frontiers().items() if off > committed_before.get(tp, -1)
                }
                try:
                    committed = await self.committer.commit(deadline=deadline)
                except StreamtrioError as exc:
                    log.error("final commit failed: %s", exc)
                    self.unfinished.append(f"not committed: {_offsets(pending)} ({exc})")
                    if self.error is None:
                        self.error = exc
                else:
                    pending = {}
                    log.info("final commit: %s", _offsets(committed) if committed else "nothing new")
        if scope.cancelled_caught:
            log.warning("shutdown deadline (shutdown_timeout=%.1fs) reached", conf.shutdown_timeout)
            if pending:
                self.unfinished.append(f"not committed: {_offsets(pending)} (the deadline was reached)")
        self._bound_closing()

    def _bound_closing(self) -> None:
        """Tell the clients and the committer when closing must be over."""
        close_by = self._close_by()
        self.transport.close_by = close_by
        for client in (self.consumer, self.producer, self.committer):
            if client is not None:
                client.close_by = close_by

    async def _finish_transactions(self) -> None:
        """Before the transactional producer closes: commit or abort its last transaction."""
        committer = self.committer
        if isinstance(committer, TransactionalCommitter):
            await committer.finish(graceful=self.stopping and self.error is None)
        elif self.producer is not None:
            limit = self.transport.close_time_left(self.app.conf.shutdown_timeout)
            with trio.move_on_after(limit, shield=True):
                try:
                    await self.producer.abort_transaction()
                except StreamtrioError as exc:
                    log.warning("closing the transaction: %s", exc)


def _single_error(group: BaseExceptionGroup[BaseException]) -> StreamtrioError | None:
    """The only streamtrio error in a (nested) exception group, if that is all it holds."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], StreamtrioError):
        return leaves[0]
    return None


@dataclass(eq=False)
class _Assignment:
    """Partitions whose assign hooks (table recovery) run in a task."""

    tps: frozenset[TP]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)


def _offsets(offsets: Mapping[TP, int]) -> str:
    """``topic[p]@offset, ...`` in partition order."""
    return ", ".join(f"{tp}@{off}" for tp, off in sorted(offsets.items()))


def _tps(tps: Collection[TP]) -> str:
    if not tps:
        return "nothing"
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ", ".join(f"{t}{sorted(p)}" for t, p in sorted(by_topic.items()))
