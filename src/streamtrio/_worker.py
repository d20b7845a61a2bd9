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
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._commit import CommitParticipant, Committer
from ._exceptions import StreamtrioError, TopicError, WorkerError
from ._lanes import Inbox, Lane
from ._stream import ChannelSource, Source, TopicSource
from ._timers import serve_service, serve_task, serve_timer
from ._topic import Topic
from ._transactions import TransactionalCommitter, transactional_id
from ._transports.base import Consumer, Producer
from ._types import TP, Message

if TYPE_CHECKING:
    from ._app import App

__all__ = ["Worker"]

log = logging.getLogger(__name__)

AssignHook = Callable[[frozenset[TP]], Awaitable[None]]


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
        self.error: BaseException | None = None
        self.stopping = False
        self.ready = False
        self._stop: trio.Event | None = None
        self._topic_inboxes: list[tuple[Topic[Any], Inbox[Message]]] = []
        self._dynamic_topics: list[Topic[Any]] = []
        self._channel_inboxes: list[Inbox[Any]] = []
        self._routes: dict[str, list[Inbox[Message]]] = {}
        self._paused: set[TP] = set()
        self._recovering: set[TP] = set()
        self._fetch_scope: trio.CancelScope | None = None
        self._held_for_producer: list[Inbox[Message]] = []
        #: trio time since which no source partition is assigned (None: some are)
        self.unassigned_since: float | None = None
        #: awaited with newly assigned partitions before they are resumed (tables recover here)
        self.on_assign_hooks: list[AssignHook] = []
        #: awaited with revoked partitions after their last commit (tables release them)
        self.on_revoke_hooks: list[AssignHook] = []
        #: act at every commit (tables produce their changelog, then persist)
        self.commit_participants: list[CommitParticipant] = []

    # -- control --------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to shut down gracefully."""
        if self._stop is not None:
            self._stop.set()

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

    def source_partitions(self) -> set[TP]:
        """Assigned partitions of the app's topics (not the internal leader topic)."""
        leader = self.app.leader_topic_name
        return {tp for tp in self.assigned if tp.topic != leader}

    def _note_assignment(self) -> None:
        if self.source_partitions():
            self.unassigned_since = None
        elif self.unassigned_since is None:
            self.unassigned_since = trio.current_time()

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
        self.generation += 1
        self.assigned |= assigned
        self._recovering |= assigned
        for tp in assigned:
            for inbox in self._route(tp.topic):
                inbox.add_lane(tp)
        for hook in self.on_assign_hooks:
            await hook(assigned)
        self._recovering -= assigned
        self._paused -= assigned
        self._note_assignment()
        if self.consumer is not None and assigned:
            self.consumer.resume_nowait(assigned)
        log.info("assigned %s", _tps(assigned))

    async def on_partitions_revoked(self, revoked: frozenset[TP]) -> Mapping[TP, int]:
        self.generation += 1
        lanes: list[Lane[Message]] = []
        for tp in revoked:
            for inbox in self._route(tp.topic):
                lane = inbox.revoke_lane(tp)
                if lane is not None:
                    lanes.append(lane)
        if not self.stopping:
            await self._wait_idle(lanes, self.app.conf.rebalance_drain_timeout, "rebalance")
        offsets: dict[TP, int] = {}
        for lane in lanes:
            frontier = lane.frontier()
            if frontier is not None and lane.tp is not None:
                offsets[lane.tp] = min(frontier, offsets.get(lane.tp, frontier))
        todo: dict[TP, int] = {}
        if self.committer is not None:
            with trio.move_on_after(self.app.conf.rebalance_drain_timeout, shield=True):
                # exactly_once: commits the transaction, returns nothing to commit
                todo = await self.committer.prepare(offsets=offsets)
                self.committer.forget(revoked)
        for hook in self.on_revoke_hooks:
            await hook(revoked)
        self.assigned -= revoked
        self._paused -= revoked
        self._note_assignment()
        if self.exactly_once:
            log.info("revoked %s (offsets committed in the transaction)", _tps(revoked))
        else:
            committing = ", ".join(f"{tp}: {offset}" for tp, offset in sorted(todo.items()))
            log.info("revoked %s%s", _tps(revoked), f" (committing {committing})" if committing else "")
        return todo

    async def _wait_idle(self, lanes: Collection[Lane[Any]], grace: float, why: str) -> None:
        """Wait (shielded, at most ``grace`` seconds) until no event of ``lanes`` is in flight."""
        with trio.move_on_after(grace, shield=True) as scope:
            # Acks happen on the hot path and notify nobody; polling here, only
            # during a rebalance or shutdown, keeps them cheap.
            while any(lane.unacked() > 0 for lane in lanes):  # noqa: ASYNC110
                await trio.sleep(0.005)
        if scope.cancelled_caught:
            busy = [str(lane.tp) for lane in lanes if lane.unacked() > 0]
            log.warning(
                "%s: events still in flight after %.1fs on %s; they will be processed again",
                why,
                grace,
                ", ".join(busy),
            )

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
            await self._serve(task_status)
        except BaseExceptionGroup as group:
            # A single start-up error (a port in use, an unreachable broker) is
            # raised as itself, not wrapped in the nurseries' exception groups.
            leaf = _single_error(group)
            if leaf is None:
                raise
            raise leaf from leaf.__cause__
        finally:
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
            txn_id = transactional_id(conf) if self.exactly_once else None
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
                for service in app._services:
                    await work.start(serve_service, self, service)
                for timer in app._timers:
                    work.start_soon(serve_timer, self, timer)
                for task in app._tasks:
                    work.start_soon(serve_task, self, task)
                self.ready = True
                log.info("%s", app._banner())
                task_status.started(self)
                assert self._stop is not None
                await self._stop.wait()
                await self._shutdown()
                work.cancel_scope.cancel()

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
        log.info(
            "stopping: draining in-flight events and committing (grace %.1fs)",
            conf.shutdown_timeout,
        )
        with trio.move_on_after(conf.shutdown_timeout, shield=True) as scope:
            if self._fetch_scope is not None:
                self._fetch_scope.cancel()
            inboxes: list[Inbox[Any]] = [inbox for _t, inbox in self._topic_inboxes] + self._channel_inboxes
            for inbox in inboxes:
                inbox.close()
            lanes = [lane for inbox in inboxes for lane in inbox.lanes.values()]
            await self._wait_idle(lanes, conf.shutdown_timeout, "shutdown")
            if isinstance(self.committer, TransactionalCommitter) and self.error is not None:
                # Nothing of a failed run is committed: the restart resumes
                # from the last committed offsets and table state.
                await self.committer.abort(self.error)
            elif self.committer is not None:
                try:
                    committed = await self.committer.commit()
                except StreamtrioError as exc:
                    log.error("final commit failed: %s", exc)
                    if self.error is None:
                        self.error = exc
                else:
                    log.info(
                        "final commit: %s",
                        {str(tp): off for tp, off in committed.items()} or "nothing new",
                    )
        if scope.cancelled_caught:
            log.warning("shutdown grace period (%.1fs) ran out", conf.shutdown_timeout)

    async def _finish_transactions(self) -> None:
        """Before the transactional producer closes: commit or abort its last transaction."""
        committer = self.committer
        if isinstance(committer, TransactionalCommitter):
            await committer.finish(graceful=self.stopping and self.error is None)
        elif self.producer is not None:
            with trio.move_on_after(self.app.conf.shutdown_timeout, shield=True):
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


def _tps(tps: Collection[TP]) -> str:
    if not tps:
        return "nothing"
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ", ".join(f"{t}{sorted(p)}" for t, p in sorted(by_topic.items()))
