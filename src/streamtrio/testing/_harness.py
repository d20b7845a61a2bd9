"""The harness both test contexts share: the app's real worker on a memory broker.

:class:`Harness` borrows an app for the length of a test: it points the app
at a fresh ``memory://`` broker (and an in-memory store and a temporary data
directory, unless the app already runs on a test broker), optionally narrows
it to some agents, runs the real :class:`~streamtrio.Worker` in the test's
nursery, and restores every setting on exit. The worker is a subclass that
only *observes*: it traces the inboxes and sources the real worker built
(see :mod:`._tracking`) and wakes waiting tests when it crashes.

Errors. An agent that raises stops the worker (the default ``on_error``);
the original exception is raised by the test helper that is waiting
(``put``, ``drain``), or, if none is, by the ``async with`` block, which is
cancelled for that purpose. It is raised once, with a note naming the agent
and the event.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import trio

from .._agent import Agent
from .._app import create_transport
from .._exceptions import AgentError, ClosedError, ConfigurationError, StreamtrioError, WorkerError
from .._lanes import Inbox
from .._stream import Source, current_event
from .._topic import Channel, Topic
from .._transports.memory import MemoryBroker
from .._types import Message
from .._worker import Worker
from ._tracking import AckTracker, CaptureInbox, EventKey, RecordingTransport, SentRecorder, event_key

if TYPE_CHECKING:
    from .._app import App

__all__ = ["TEST_BROKER_PREFIX", "Harness", "is_test_broker", "new_test_broker_url"]


#: Memory brokers whose name starts with this belong to one test.
TEST_BROKER_PREFIX = "streamtrio-test-"


def new_test_broker_url() -> str:
    """A ``memory://`` URL naming a broker no other test uses."""
    return f"memory://{TEST_BROKER_PREFIX}{uuid.uuid4().hex[:12]}"


def is_test_broker(url: str) -> bool:
    return url.startswith(f"memory://{TEST_BROKER_PREFIX}")


class ResultSink:
    """A sink added to an agent for the test: what it yields, in order, and per event."""

    def __init__(self, agent: Agent[Any]) -> None:
        self.agent = agent
        self.values: list[Any] = []
        self.by_event: dict[EventKey, list[Any]] = {}

    def __call__(self, value: Any) -> None:
        self.values.append(value)
        event = current_event()
        if event is not None:
            self.by_event.setdefault(event_key(event), []).append(value)

    def __repr__(self) -> str:
        return f"<results of {self.agent.name}>"


class _Readiness:
    """Passes the worker's readiness on, remembering that it happened."""

    def __init__(self, inner: trio.TaskStatus[Worker]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        self.done = True
        self.inner.started(value)


class _TestWorker(Worker):
    """The real worker; the inboxes and sources it builds are traced for the test."""

    def __init__(self, app: App, harness: Harness) -> None:
        super().__init__(app)
        self._harness = harness

    def _subscribe_agents(self) -> list[tuple[Any, Source[Any]]]:
        plan = super()._subscribe_agents()
        tracker = self._harness.tracker
        return [(agent, tracker.adopt(agent.channel, source)) for agent, source in plan]

    async def add_subscription(self, topic: Topic[Any]) -> Inbox[Message]:
        inbox = await super().add_subscription(topic)
        self._harness.plumbing.update(topic.topics)
        self._harness.tracker.adopt_inbox(topic, inbox)
        return inbox

    def crash(self, error: BaseException) -> None:
        super().crash(error)
        self._harness.tracker.changed()


class Harness:
    """Runs ``app`` for a test. See the module docstring.

    Args:
        app: the app.
        agents: run only these agents (``None``: every agent).
        background: run the app's timers, tasks and services.
        capture_channel_sinks: subscribe to in-process channel sinks that no
            running agent reads, recording what is sent to them.
        broker: the memory broker URL (default: keep an app's test broker,
            else a fresh one).
        store: the store URL (default ``memory://`` unless the app runs on a test broker).
        datadir: the data directory (default: a temporary one unless the app
            runs on a test broker).
        web: serve the web app on 127.0.0.1 (a free port).
        settings: more settings to override for the test.
    """

    def __init__(
        self,
        app: App,
        *,
        agents: Sequence[Agent[Any]] | None = None,
        background: bool = True,
        capture_channel_sinks: bool = False,
        broker: str | None = None,
        store: str | None = None,
        datadir: str | None = None,
        web: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.agents = list(app.agents.values()) if agents is None else list(agents)
        self.background = background
        self.capture_channel_sinks = capture_channel_sinks
        self.web = web
        self.tracker = AckTracker()
        self.recorder = SentRecorder()
        self.recorder.tracker = self.tracker
        self.recorder.excluded = self._excluded
        #: topics the running agents read back themselves (group_by, through)
        self.plumbing: set[str] = set()
        self.results: dict[str, ResultSink] = {a.name: ResultSink(a) for a in self.agents}
        self.worker: _TestWorker | None = None
        self.crash: BaseException | None = None
        self.surfaced = False
        self.finished = False
        self._scope: trio.CancelScope | None = None
        self._tempdir: str | None = None
        if broker is not None and not broker.startswith("memory://"):
            raise ConfigurationError(
                f"test contexts run on the memory:// transport, not {broker!r}; to test against "
                "Kafka, run the worker with streamtrio.serve(app) and the kafka_broker fixture"
            )
        keep = is_test_broker(app.conf.broker)
        self._keep = keep
        self._store = store
        self._datadir = datadir
        self._settings = dict(settings or {})
        self.broker_url = broker or (app.conf.broker if keep else new_test_broker_url())
        self._owns_broker = broker is None and not keep
        name = self.broker_url[len("memory://") :].strip("/")
        # An owned broker is registered only while the app runs (see borrowed());
        # self.broker stays readable after the test.
        self.broker = MemoryBroker(name) if self._owns_broker else MemoryBroker.get(name)

    def _overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {"broker": self.broker_url, "web_enabled": self.web}
        if self._store is not None or not self._keep:
            overrides["store"] = self._store or "memory://"
        if self._datadir is not None:
            overrides["datadir"] = self._datadir
        elif not self._keep:
            self._tempdir = tempfile.mkdtemp(prefix=TEST_BROKER_PREFIX)
            overrides["datadir"] = self._tempdir
        if self.web:
            overrides.update(web_port=0, web_bind="127.0.0.1", web_host="127.0.0.1", web_canonical_url=None)
        overrides.update(self._settings)
        return overrides

    # -- borrowing the app -----------------------------------------------------------

    @contextmanager
    def borrowed(self) -> Iterator[None]:
        """Point the app at the test's broker, store and agents; restore everything after."""
        app = self.app
        if app._worker is not None:
            raise WorkerError(
                f"app {app.id!r} is already running a worker; a test context needs the app to itself"
            )
        conf = app.conf
        saved_values = dict(conf._values)
        saved_transport = app._transport_obj
        saved_agents = app.agents
        saved_background = (app._timers, app._tasks, app._services)
        saved_sinks = {agent.name: list(agent.sinks) for agent in self.agents}
        captures: list[CaptureInbox] = []
        try:
            conf.update(self._overrides(), source="streamtrio.testing")
            if self._owns_broker:
                MemoryBroker._registry[self.broker.name] = self.broker
            app._transport_obj = RecordingTransport(create_transport(self.broker_url, conf), self.recorder)
            app.agents = {agent.name: agent for agent in self.agents}
            if not self.background:
                app._timers, app._tasks, app._services = [], [], []
            for agent in self.agents:
                agent.sinks.append(self.results[agent.name])
            if self.capture_channel_sinks:
                captures = self._capture_channel_sinks()
            yield
        finally:
            for inbox in captures:
                inbox.channel._unsubscribe(inbox)
            for agent in self.agents:
                agent.sinks[:] = saved_sinks[agent.name]
            app._timers, app._tasks, app._services = saved_background
            app.agents = saved_agents
            app._transport_obj = saved_transport
            conf._values = saved_values
            if self._owns_broker:
                MemoryBroker._registry.pop(self.broker.name, None)
            if self._tempdir is not None:
                shutil.rmtree(self._tempdir, ignore_errors=True)

    def _capture_channel_sinks(self) -> list[CaptureInbox]:
        running = {agent.channel for agent in self.agents}
        channels: list[Channel[Any]] = []
        for agent in self.agents:
            for sink in agent.sinks:
                target = sink.channel if isinstance(sink, Agent) else sink
                if (
                    isinstance(target, Channel)
                    and not isinstance(target, Topic)
                    and target not in running
                    and target not in channels
                ):
                    channels.append(target)
        captures = []
        for channel in channels:
            inbox = CaptureInbox(channel, self.recorder)
            channel._subscribers.append(inbox)
            captures.append(inbox)
        return captures

    # -- running ----------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        worker = self.worker = _TestWorker(self.app, self)
        readiness = _Readiness(task_status)
        try:
            await worker.serve(task_status=readiness)
        except StreamtrioError as exc:
            if not readiness.done:
                raise  # it never started: nursery.start() raises this
            self.crash = exc
            if not self.surfaced and self._scope is not None:
                # Nobody is waiting on a helper to see it: interrupt the test body.
                self._scope.cancel()
        finally:
            self.finished = True
            self.tracker.changed()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Harness]:
        """Run the worker for the block (see the module docstring for errors)."""
        with self.borrowed():
            try:
                async with trio.open_nursery() as nursery:
                    self._scope = nursery.cancel_scope
                    await nursery.start(self._run)
                    await self._tables_served()
                    try:
                        yield self
                    finally:
                        if self.worker is not None:
                            self.worker.stop()
            except BaseExceptionGroup as group:
                raise_single(group)
        self.raise_unsurfaced()

    async def _tables_served(self) -> None:
        """Wait, if the app has tables, until its worker was assigned and recovered them.

        A write made outside an event before that goes to the owner through the
        table's writes topic (see docs/tables.md) and is not read back at once:
        a test starts where a web view's write is read back, as in production
        once the worker serves.
        """
        worker = self.worker
        if worker is None or not self.app.tables or not self.app._needs_group():
            return
        await worker.wait_assigned()

    # -- errors ---------------------------------------------------------------------------

    def _original(self, error: BaseException) -> BaseException:
        original = error
        # "agent X raised ...", "timer X raised ...": the user's own exception is the cause.
        if isinstance(error, AgentError | WorkerError) and error.__cause__ is not None:
            original = error.__cause__
        if original is not error and not getattr(original, "_streamtrio_noted", False):
            original.add_note(f"streamtrio.testing: {error}")
            original._streamtrio_noted = True  # type: ignore[attr-defined]
        return original

    def check(self) -> None:
        """Raise the agent's error if the worker crashed (once); ClosedError after."""
        worker = self.worker
        error = self.crash or (worker.error if worker is not None else None)
        if error is not None:
            if self.surfaced:
                raise ClosedError(f"the test worker of app {self.app.id!r} stopped: {error}")
            self.surfaced = True
            raise self._original(error)
        if self.finished:
            raise ClosedError(f"the test worker of app {self.app.id!r} is not running")

    def raise_unsurfaced(self) -> None:
        error = self.crash
        if error is not None and not self.surfaced:
            self.surfaced = True
            raise self._original(error)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait (woken by acks, crashes and the worker's end) until ``predicate()`` holds.

        Raises:
            Exception: what the agent raised, if the worker crashed meanwhile.
            ClosedError: the worker is not running.
        """
        while True:
            self.check()
            if predicate():
                return
            await self.tracker.wait()

    # -- following an event's effects ----------------------------------------------------

    def _excluded(self, topic: str) -> bool:
        """Topics that are the runtime's plumbing, not what an agent sent: repartition
        topics read back by the agent, RPC reply topics, table changelogs."""
        if topic in self.plumbing:
            return True
        rpc = getattr(self.app, "_rpc", None)
        if rpc is not None and topic == rpc.topic_name:
            return True
        if topic.startswith(f"{self.app.id}-reply-"):
            return True  # another client's reply topic
        manager = self.app._table_manager
        return manager is not None and topic in manager.changelog_topics

    def descendants(self, key: EventKey) -> list[EventKey]:
        """``key`` and the messages its processing produced, transitively (delivered ones)."""
        found = [key]
        seen = {key}
        index = 0
        while index < len(found):
            for entry in self.recorder.by_source.get(found[index], ()):
                where = entry.where
                if where is not None:
                    child = (where.topic, where.partition, where.offset)
                    if child not in seen:
                        seen.add(child)
                        found.append(child)
            index += 1
        return found

    def settled(self, key: EventKey) -> bool:
        """Whether the event at ``key`` is processed, and so is everything it produced
        that a running agent reads (a group_by's repartitioned copy, for one)."""
        todo = [key]
        seen = {key}
        tracker = self.tracker
        while todo:
            current = todo.pop()
            if not tracker.processed(current):
                return False
            for entry in self.recorder.by_source.get(current, ()):
                if entry.channel is not None or entry.failed:
                    continue
                where = entry.where
                if where is None:
                    return False  # not delivered yet
                child = (where.topic, where.partition, where.offset)
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return True

    async def settle(self) -> None:
        """Wait until every message agents sent is delivered (read back from the broker)."""
        await self.wait_until(lambda: self.recorder.pending() == 0)


def raise_single(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the only exception in ``group`` (keeping its own context); else the group."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    if len(leaves) != 1:
        raise group
    leaf = leaves[0]
    context = leaf.__context__
    try:
        raise leaf
    finally:
        leaf.__context__ = context
