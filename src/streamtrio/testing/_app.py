"""``open_test_app(app)``: the whole app, run for real on a fresh ``memory://`` broker.

Every agent, table, timer, task and service runs in the app's real worker
inside the test's nursery (the web server too with ``web=True``). The test
sends to topics, waits until the agents have caught up (:meth:`TestApp.drain`,
woken by the lanes' acks), reads topics back decoded, reads tables, and moves
trio's ``MockClock`` forward.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from .._agent import Agent
from .._stream import _current_event
from .._topic import Channel, Topic
from .._types import TP, Headers, RecordMetadata
from ._harness import Harness
from ._time import advance_time
from ._tracking import SentMessage, decode, schema_for

if TYPE_CHECKING:
    import httpx

    from .._app import App
    from .._tables.table import Table
    from .._transports.memory import MemoryBroker
    from .._worker import Worker

__all__ = ["TestApp", "open_test_app"]


class TestApp:
    """A running app under test. Obtained from ``async with open_test_app(app) as test_app``.

    Attributes:
        app: the app.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, app: App, harness: Harness) -> None:
        self.app = app
        self._harness = harness
        self._http: httpx.AsyncClient | None = None

    # -- input ------------------------------------------------------------------------------

    async def send(
        self,
        topic: str | Channel[Any] | Agent[Any],
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: float | None = None,
    ) -> RecordMetadata:
        """Send a message to a topic (by name or description), a channel or an agent.

        A topic name the app describes is encoded with its description's
        schema; any other name with the app's default serializers. Returns
        once the broker has the message; :meth:`drain` waits for the agents.
        """
        self._harness.check()
        target: Channel[Any]
        if isinstance(topic, Agent):
            target = topic.channel
        elif isinstance(topic, str):
            target = self._topic(topic)
        else:
            target = topic
        token = _current_event.set(None)
        try:
            if isinstance(target, Topic):
                return await target.send(
                    key=key, value=value, partition=partition, headers=headers, timestamp=timestamp
                )
            if isinstance(headers, dict):
                headers = list(headers.items())
            return await target.send(
                key=key, value=value, partition=partition, headers=headers, timestamp=timestamp
            )
        finally:
            _current_event.reset(token)

    def _topic(self, name: str) -> Topic[Any]:
        for topic in self.app._topics:
            if topic.pattern is None and topic.topics == (name,):
                return topic
        # Not described by the app: a description that is not registered with it.
        return Topic(self.app, topics=[name])

    async def drain(self) -> None:
        """Wait until every agent has processed everything on its topics and channels.

        Messages the agents produce on the way to topics other agents read
        are waited for too, so a pipeline of agents settles completely.

        Raises:
            Exception: what an agent raised, the original exception.
        """
        harness = self._harness
        await harness.wait_until(lambda: harness.tracker.caught_up(harness.broker, self.app.id))
        await harness.settle()

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of trio time pass (needs trio's MockClock; see :func:`advance_time`)."""
        await advance_time(seconds)

    # -- output -----------------------------------------------------------------------------

    def messages(self, topic: str | Topic[Any], *, partition: int | None = None) -> list[SentMessage]:
        """Every message on a topic, decoded, by partition then offset.

        Decoded with the topic description's schema (a :class:`Topic`, or the
        app's description of that name), else the app's default serializers;
        what does not decode stays bytes. Readable after the block too.
        """
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        broker = self.broker
        count = broker.partition_count(name)
        if count is None:
            return []
        schema = schema_for(self.app, topic)
        partitions = range(count) if partition is None else [partition]
        return [decode(schema, m) for p in partitions for m in broker.messages(name, p)]

    def results(self, agent: Agent[Any] | str) -> list[Any]:
        """What an agent yielded so far, in order, as its sinks received it."""
        name = agent if isinstance(agent, str) else agent.name
        return list(self._harness.results[name].values)

    def committed(self) -> dict[TP, int]:
        """The offsets committed for the app's consumer group."""
        return self.broker.committed(self.app.id)

    async def commit(self) -> dict[TP, int]:
        """Commit now (tables produce and persist, then offsets); returns what was committed."""
        self._harness.check()
        committer = self.worker.committer
        if committer is None:
            return {}
        return await committer.commit()

    def table(self, name: str) -> Table:
        """The app's table ``name``, readable (and writable) while the app runs."""
        return self.app.tables[name]

    # -- web ----------------------------------------------------------------------------------

    @property
    def web_url(self) -> str:
        """The worker's web URL (``open_test_app(app, web=True)``)."""
        url = self.app.web.url
        if url is None:
            raise RuntimeError("the web server is not running: use open_test_app(app, web=True)")
        return url

    @property
    def http(self) -> httpx.AsyncClient:
        """An HTTP client for the app's web views (``open_test_app(app, web=True)``).

        Requests go to the worker's Quart app in process (no socket), so they
        work under an autojumping ``MockClock`` too; ``web_url`` is the real
        server's address for clients that need a socket.
        """
        if self._http is None:
            raise RuntimeError("the web server is not running: use open_test_app(app, web=True)")
        return self._http

    # -- access --------------------------------------------------------------------------------

    @property
    def broker(self) -> MemoryBroker:
        """The memory broker the app runs on (readable after the block, too)."""
        return self._harness.broker

    @property
    def worker(self) -> Worker:
        worker = self._harness.worker
        assert worker is not None
        return worker

    def __repr__(self) -> str:
        return f"<TestApp {self.app.id} on {self._harness.broker_url}>"


@asynccontextmanager
async def open_test_app(
    app: App,
    *,
    web: bool = False,
    broker: str | None = None,
    store: str | None = None,
    datadir: str | None = None,
    **settings: Any,
) -> AsyncIterator[TestApp]:
    """Run the whole app in its real worker for the block, on a ``memory://`` broker.

    Args:
        app: the app (for example your project's module-level app).
        web: serve the web views on 127.0.0.1 (a free port); see :attr:`TestApp.http`.
        broker: a ``memory://`` URL (default: a fresh broker, or the app's own
            if it already runs on a test broker, as apps from
            ``streamtrio_app_factory`` do).
        store: the store URL (default ``memory://``, or the test app's own);
            ``"lmdb://"`` runs the tables on LMDB in ``datadir``.
        datadir: the data directory (default: a temporary one, removed after,
            or the test app's own).
        **settings: app settings to override for the test.

    The app is borrowed: its settings are changed for the block and restored
    after; it cannot run elsewhere meanwhile.

    Raises:
        WorkerError: the app is already running.
        StreamtrioError: the worker could not start.
        Exception: what an agent raised, if no :meth:`TestApp.drain` raised it already.
    """
    harness = Harness(app, broker=broker, store=store, datadir=datadir, web=web, settings=settings)
    async with harness.running():
        test_app = TestApp(app, harness)
        async with AsyncExitStack() as stack:
            if web:
                import httpx

                quart: Any = app.web.quart
                assert quart is not None
                test_app._http = await stack.enter_async_context(
                    httpx.AsyncClient(transport=httpx.ASGITransport(app=quart), base_url=test_app.web_url)
                )
            yield test_app
