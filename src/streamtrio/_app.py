"""App: the registry of topics, agents, timers, tasks, services and commands.

An App does no I/O by itself; a :class:`~streamtrio._worker.Worker` runs it
(``streamtrio run``, :func:`streamtrio.run` or :func:`streamtrio.serve`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ._agent import Agent, AgentFun, SinkT
from ._codecs import Codec, Schema
from ._dead_letters import DeadLetters
from ._exceptions import ClosedError, ConfigurationError, DeadLetterError, ProducerError
from ._rpc import ReplyConsumer
from ._settings import Settings, _store_url, parse_duration
from ._signals import Lifecycle, Signal
from ._stream import ChannelSource, Event, IterableSource, Processor, Stream, output_started
from ._supervisor import supervised
from ._timers import Crontab, Service, Task, Timer, crontab_task
from ._topic import Channel, FutureMessage, Topic
from ._transports.base import Producer, Transport
from ._types import TP, Headers, Message, RecordMetadata, TopicSpec
from ._version import __version__

if TYPE_CHECKING:
    import httpx

    from ._cluster import ClusterMember
    from ._monitor import Monitor
    from ._web.app import WebServer
    from ._web.router import Router
    from ._worker import Component, Worker

__all__ = ["App"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


_TOPIC_OPTIONS = frozenset(
    {
        "key_type",
        "value_type",
        "schema",
        "key_serializer",
        "value_serializer",
        "partitions",
        "retention",
        "compacting",
        "deleting",
        "replicas",
        "acks",
        "internal",
        "config",
        "maxsize",
    }
)


def _faust_qualname(fun: Callable[..., Any]) -> str:
    """``module.function`` as Faust names agents (``__main__`` is the script's module name)."""
    module = getattr(fun, "__module__", "__main__")
    if module == "__main__":
        import sys
        from pathlib import Path

        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file:
            module = Path(main_file).stem
    return f"{module}.{getattr(fun, '__qualname__', getattr(fun, '__name__', 'agent'))}"


def create_transport(url: str, settings: Settings) -> Transport:
    """The transport for a broker URL.

    Raises:
        ConfigurationError: the URL's scheme is not ``kafka://`` or ``memory://``.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from ._transports.memory import MemoryTransport

        return MemoryTransport(url, settings)
    if scheme == "kafka":
        from ._transports.kafka import KafkaTransport

        return KafkaTransport(url, settings)
    raise ConfigurationError(
        f"setting 'broker': unsupported URL {url!r} (expected kafka://host:port[;host:port] or memory://)"
    )


class App:
    """A stream-processing application.

    Args:
        id: the application id; also the consumer group id and the prefix of
            the app's internal topics.
        **options: settings (see ``docs/settings.md``); unknown names and
            wrong types raise :class:`~streamtrio.ConfigurationError`.
    """

    def __init__(self, id: str, **options: Any) -> None:
        if not id or not re.fullmatch(r"[A-Za-z0-9._-]+", id):
            raise ConfigurationError(
                f"app id {id!r}: use letters, digits, '.', '_' and '-' (it names the group and topics)"
            )
        version = options.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > 1:
            # Faust's id_format: a new version is a new group with new internal topics
            id = f"{id}-v{version}"
        self.id = id
        self.conf = Settings(id, **options)
        self.agents: dict[str, Agent[Any]] = {}
        self._topics: list[Topic[Any]] = []
        self._timers: list[Timer] = []
        self._tasks: list[Task] = []
        self._services: list[Service] = []
        self._commands: list[tuple[Callable[..., Any], dict[str, Any]]] = []
        #: parts of the worker with their own lifetime (table manager, web server)
        self._components: list[Component] = []
        self._rpc = ReplyConsumer(self)
        self._components.append(self._rpc)
        self._dead_letters = DeadLetters(self)
        self._components.append(self._dead_letters)
        #: True between a revoke and the end of the following assignment (Faust's app.rebalancing)
        self.rebalancing = False
        # Faust's App signals: @app.on_rebalance_complete.connect
        self.on_configured = Signal("on_configured", self)
        self.on_before_configured = Signal("on_before_configured", self)
        self.on_after_configured = Signal("on_after_configured", self)
        self.on_worker_init = Signal("on_worker_init", self)
        self.on_partitions_assigned = Signal("on_partitions_assigned", self)
        self.on_partitions_revoked = Signal("on_partitions_revoked", self)
        self.on_rebalance_start = Signal("on_rebalance_start", self)
        self.on_rebalance_complete = Signal("on_rebalance_complete", self)
        self.on_produce_message = Signal("on_produce_message", self)
        self._lifecycle = Lifecycle(self)
        self._worker: Worker | None = None
        self._producer: Producer | None = None
        self._transport_obj: Transport | None = None
        #: streams whose agent is executing a step (exactly_once commits wait for 0)
        self._steps = 0
        #: topics streamed outside agents (``topic.stream()``): the worker joins the group
        self._streamed_topics: list[Topic[Any]] = []
        self._init_web()
        # last: its assign hook runs after the tables have recovered
        self._components.append(self._lifecycle)

    # -- configuration -----------------------------------------------------------

    def config_from_object(self, obj: Any, *, silent: bool = False, force: bool = False) -> None:
        """Read settings from an object, a mapping, or a module named by a string.

        Args:
            obj: the object, mapping or module name.
            silent: ignore an import error of a module name.
            force: accepted for Faust compatibility (settings are always read at once).
        """
        try:
            self.conf.config_from_object(obj)
        except ConfigurationError:
            if silent and isinstance(obj, str):
                return
            raise
        self._transport_obj = None

    # -- topics and channels ---------------------------------------------------

    def topic(
        self,
        *topics: str,
        pattern: str | re.Pattern[str] | None = None,
        key_type: type | None = None,
        value_type: type | None = None,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        partitions: int | None = None,
        retention: float | timedelta | str | None = None,
        compacting: bool | None = None,
        deleting: bool | None = None,
        replicas: int | None = None,
        acks: bool = True,
        internal: bool = False,
        config: Mapping[str, Any] | None = None,
        maxsize: int | None = None,
        allow_empty: bool = False,
        schema: Schema | None = None,
        partitioner: str | None = None,
    ) -> Topic[Any]:
        """Describe a topic; it is created at worker start if it does not exist.

        ``schema`` (Faust's ``faust.Schema``) supplies the key/value types and
        serializers that are not given as arguments. ``partitioner`` (default:
        the app's ``partitioner`` setting) is how keys map to its partitions
        (see "Where keys live" in ``docs/tables.md``).
        """
        topic: Topic[Any] = Topic(
            self,
            topics=topics,
            pattern=pattern,
            key_type=key_type,
            value_type=value_type,
            key_serializer=key_serializer,
            value_serializer=value_serializer,
            partitions=partitions,
            retention=retention,
            compacting=compacting,
            deleting=deleting,
            replicas=replicas,
            internal=internal,
            config=config,
            maxsize=maxsize,
            acks=acks,
            schema=schema,
            partitioner=partitioner,
        )
        self._topics.append(topic)
        return topic

    def channel(
        self,
        *,
        key_type: type | None = None,
        value_type: type | None = None,
        maxsize: int | None = None,
    ) -> Channel[Any]:
        """An in-process channel (no broker), iterable by agents."""
        return Channel(self, key_type=key_type, value_type=value_type, maxsize=maxsize)

    def _topic_named(self, name: str, **options: Any) -> Topic[Any]:
        if not options:
            for topic in self._topics:
                if topic.pattern is None and topic.topics == (name,):
                    return topic
        return self.topic(name, **options)

    # -- decorators --------------------------------------------------------------

    def agent(
        self,
        channel: Channel[Any] | str | None = None,
        *,
        name: str | None = None,
        concurrency: int = 1,
        sink: Iterable[SinkT] | None = None,
        isolated_partitions: bool = False,
        on_error: str = "stop",
        supervisor_strategy: Any = None,
        use_reply_headers: bool = True,
        **topic_options: Any,
    ) -> Callable[[AgentFun], Agent[Any]]:
        """Register an ``async def f(stream)`` (or async generator) as an agent.

        Args:
            channel: the topic, channel or topic name to consume; by default
                a topic named ``<app id>-<agent name>`` (``<app id>-<module>.<function>``
                with the setting ``faust_agent_topic_names``).
            name: the agent name (default: the function name).
            concurrency: how many actors process the stream.
            sink: where yielded values go: agents, topics, channels, callables.
            isolated_partitions: one actor per partition (not available yet).
            on_error: ``"stop"`` (default), ``"restart"`` or ``"dead_letter"``.
            supervisor_strategy: accepted for Faust; use ``on_error``.
            use_reply_headers: accepted for Faust (replies always use headers).
            **topic_options: for a topic-less agent or a topic name, Faust's
                ``key_type``, ``value_type``, ``schema``, ``partitions``, ...
                of the topic (the arguments of :meth:`topic`).
        """
        unknown = set(topic_options) - _TOPIC_OPTIONS
        if unknown:
            raise TypeError(f"app.agent() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if topic_options and channel is not None and not isinstance(channel, str):
            raise TypeError(
                f"app.agent({channel!r}, {', '.join(sorted(topic_options))}=...): "
                "topic options only apply to a topic-less agent or a topic name"
            )

        def decorator(fun: AgentFun) -> Agent[Any]:
            agent_name = name or fun.__name__
            if agent_name in self.agents:
                raise ConfigurationError(f"an agent named {agent_name!r} is already registered")
            source: Channel[Any]
            if channel is None:
                if self.conf.faust_agent_topic_names:
                    topic_name = f"{self.id}-{_faust_qualname(fun)}"
                else:
                    topic_name = f"{self.id}-{agent_name}"
                source = self._topic_named(topic_name, **topic_options)
            elif isinstance(channel, str):
                source = self._topic_named(channel, **topic_options)
            else:
                source = channel
            agent: Agent[Any] = Agent(
                fun,
                app=self,
                name=agent_name,
                channel=source,
                concurrency=concurrency,
                sink=sink,
                isolated_partitions=isolated_partitions,
                on_error=on_error,
            )
            self.agents[agent_name] = agent
            return agent

        return decorator

    actor = agent

    def timer(self, interval: float | timedelta | str, on_leader: bool = False) -> Callable[[F], F]:
        """Run the decorated ``async def`` every ``interval`` seconds while the worker runs."""
        seconds = parse_duration(interval, name="timer interval")
        if seconds <= 0:
            raise ConfigurationError(f"timer interval must be positive, got {interval!r}")

        def decorator(fun: F) -> F:
            self._timers.append(Timer(fun, seconds, on_leader))
            return fun

        return decorator

    def crontab(self, cron_format: str, *, timezone: Any = None, on_leader: bool = False) -> Callable[[F], F]:
        """Run the decorated ``async def`` at each minute the cron expression matches.

        Args:
            cron_format: ``"minute hour day month weekday"``, e.g. ``"*/5 * * * *"``.
            timezone: a ``tzinfo`` the expression is read in (default UTC).
            on_leader: run only on the leader worker.
        """
        cron = Crontab(cron_format)

        def decorator(fun: F) -> F:
            loop = crontab_task(fun, cron, timezone=timezone, on_leader=on_leader, app=self)
            self._tasks.append(Task(loop))
            return fun

        return decorator

    @property
    def should_stop(self) -> bool:
        """True when no worker runs this app or its worker is stopping (end your loops)."""
        worker = self._worker
        return worker is None or worker.stopping or (worker._stop is not None and worker._stop.is_set())

    async def sleep(self, seconds: float | timedelta) -> None:
        """Sleep in trio (Faust apps call ``await app.sleep(n)``)."""
        await trio.sleep(parse_duration(seconds, name="sleep"))

    def task(self, fun: F) -> F:
        """Run the decorated ``async def`` once, when the worker is ready."""
        self._tasks.append(Task(fun))
        return fun

    def service(self, target: F) -> F:
        """Start an async function, or a class with ``async serve(task_status=)``, with the worker."""
        self._services.append(Service(target))
        return target

    def command(
        self, *params: Any, name: str | None = None, help: str | None = None, **kwargs: Any
    ) -> Callable[[F], F]:
        """Add a sub-command to the app's CLI (``app.main()``).

        ``async def`` commands run in trio with the app's producer open.
        Parameters are typer annotations, or, as in Faust, ``option(...)`` and
        ``argument(...)`` (``streamtrio.cli``) passed to the decorator. A
        first parameter named ``self`` receives a context with ``say()``,
        ``carp()`` and ``app``.
        """

        def decorator(fun: F) -> F:
            options = {"name": name or fun.__name__.replace("_", "-"), "help": help, "params": params}
            self._commands.append((fun, options))
            return fun

        return decorator

    # -- tables ------------------------------------------------------------------

    if TYPE_CHECKING:
        from ._tables.manager import TableManager as _TableManager
        from ._tables.sets import SetGlobalTable as _SetGlobalTable
        from ._tables.sets import SetTable as _SetTable
        from ._tables.table import GlobalTable as _GlobalTable
        from ._tables.table import Table as _Table

    _table_manager: _TableManager | None = None

    @property
    def tables(self) -> _TableManager:
        """The app's tables by name; also recovery state (``wait_until_recovery_completed``)."""
        if self._table_manager is None:
            from ._tables.manager import TableManager

            self._table_manager = TableManager(self)
            self._components.insert(self._components.index(self._lifecycle), self._table_manager)
        return self._table_manager

    def Table(  # Faust's name
        self,
        name: str,
        *,
        default: Callable[[], Any] | None = None,
        key_type: type | None = None,
        value_type: type | None = None,
        partitions: int | None = None,
        changelog_topic: Topic[Any] | str | None = None,
        store: str | None = None,
        help: str | None = None,
        on_recover: Callable[[], Any] | None = None,
        on_changelog_event: Callable[[Any], Any] | None = None,
        recovery_buffer_size: int = 1000,
        standby_buffer_size: int | None = None,
        extra_topic_configs: Mapping[str, Any] | None = None,
        use_partitioner: bool = False,
        partitioner: str | None = None,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        on_window_close: Callable[[Any, Any], Any] | None = None,
    ) -> _Table:
        """A changelog-backed table partitioned like the agents' source topics.

        Window it with ``.tumbling()``, ``.hopping()`` or ``.using_window()``;
        ``on_window_close(key, value)`` is then called once per closed window.
        See :class:`streamtrio.Table`, ``docs/tables.md`` and ``docs/windows.md``.
        """
        from ._tables.table import Table

        return self._add_table(Table, locals())

    def GlobalTable(  # Faust's name
        self,
        name: str,
        *,
        default: Callable[[], Any] | None = None,
        key_type: type | None = None,
        value_type: type | None = None,
        partitions: int | None = None,
        changelog_topic: Topic[Any] | str | None = None,
        store: str | None = None,
        help: str | None = None,
        on_recover: Callable[[], Any] | None = None,
        on_changelog_event: Callable[[Any], Any] | None = None,
        recovery_buffer_size: int = 1000,
        standby_buffer_size: int | None = None,
        extra_topic_configs: Mapping[str, Any] | None = None,
        use_partitioner: bool = False,
        partitioner: str | None = None,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
    ) -> _GlobalTable:
        """A table every worker holds in full, replayed before the worker is ready.

        See :class:`streamtrio.GlobalTable` and ``docs/tables.md``.
        """
        from ._tables.table import GlobalTable

        table = self._add_table(GlobalTable, locals())
        assert isinstance(table, GlobalTable)
        return table

    def SetTable(  # Faust's name
        self,
        name: str,
        *,
        key_type: type | None = None,
        value_type: type | None = None,
        partitions: int | None = None,
        changelog_topic: Topic[Any] | str | None = None,
        store: str | None = None,
        help: str | None = None,
        on_recover: Callable[[], Any] | None = None,
        on_changelog_event: Callable[[Any], Any] | None = None,
        recovery_buffer_size: int = 1000,
        standby_buffer_size: int | None = None,
        extra_topic_configs: Mapping[str, Any] | None = None,
        use_partitioner: bool = False,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        start_manager: bool = False,
        manager_topic_name: str | None = None,
        manager_topic_suffix: str | None = None,
    ) -> _SetTable:
        """A changelog-backed table whose values are sets (``value_type``: the members' type).

        ``table[key].add(x)``, ``.discard(x)`` and ``table[key] |= {...}`` are
        written to the changelog like assignments. See ``docs/tables.md``.
        """
        from ._tables.sets import SetTable

        table = self._add_table(SetTable, locals())
        assert isinstance(table, SetTable)
        return table

    def SetGlobalTable(  # Faust's name
        self,
        name: str,
        *,
        key_type: type | None = None,
        value_type: type | None = None,
        partitions: int | None = None,
        changelog_topic: Topic[Any] | str | None = None,
        store: str | None = None,
        help: str | None = None,
        on_recover: Callable[[], Any] | None = None,
        on_changelog_event: Callable[[Any], Any] | None = None,
        recovery_buffer_size: int = 1000,
        standby_buffer_size: int | None = None,
        extra_topic_configs: Mapping[str, Any] | None = None,
        use_partitioner: bool = False,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        start_manager: bool = False,
        manager_topic_name: str | None = None,
        manager_topic_suffix: str | None = None,
    ) -> _SetGlobalTable:
        """A :meth:`SetTable` every worker holds in full."""
        from ._tables.sets import SetGlobalTable

        table = self._add_table(SetGlobalTable, locals())
        assert isinstance(table, SetGlobalTable)
        return table

    def _add_table(self, cls: type[_Table], args: dict[str, Any]) -> _Table:
        skip = ("self", "name", "Table", "GlobalTable", "SetTable", "SetGlobalTable")
        options = {k: v for k, v in args.items() if k not in skip}
        name = args["name"]
        if options.get("store") is not None:
            options["store"] = _store_url(options["store"], f"table {name!r}")
        # changelog_serializer: the default codec of changelog values ("json"
        # reads and writes Faust's changelogs); a table's own serializer wins.
        # Keys keep the table's default: their codec also places them on partitions.
        if options.get("value_serializer") is None:
            options["value_serializer"] = self.conf.changelog_serializer
        if name in self.tables:
            raise ConfigurationError(f"a table named {name!r} is already registered")
        table = cls(self, name, manager=self.tables, **options)
        self.tables.add(table)
        return table

    # -- web -----------------------------------------------------------------------

    def _init_web(self) -> None:
        from ._broker_watch import BrokerWatch
        from ._cluster import ClusterMember
        from ._monitor import Monitor
        from ._web.app import WebServer
        from ._web.router import Router

        self._web = WebServer(self)
        self._cluster = ClusterMember(self, url=lambda: self._web.url)
        self._monitor = Monitor(self)
        self._broker_watch = BrokerWatch(self)
        self._router = Router(self)
        # Declared with the app's topics: the compacted cluster-map topic.
        self._topics.append(self._cluster.topic())
        self._components.extend([self._web, self._cluster, self._monitor, self._broker_watch])

    def page(self, path: str, *, name: str | None = None) -> Callable[[F], F]:
        """Serve the decorated view at ``path`` on every worker.

        The view is an ``async def view(request, **params)`` (GET) or a class
        with async ``get``/``post``/``put``/``patch``/``delete`` methods taking
        ``(self, request, **params)``; subclass :class:`streamtrio.View` to get
        ``self.app``. Dicts and lists are sent as JSON; Quart responses pass
        through; HTTP errors (``werkzeug.exceptions``) answer with JSON bodies.
        Path parameters: ``/totals/<account>/`` or ``/totals/{account}/``.
        """

        def decorator(view: F) -> F:
            self._web.pages.append((path, view, name))
            return view

        return decorator

    def table_route(
        self,
        table: Any,
        shard_param: str | None = None,
        *,
        query_param: str | None = None,
        match_info: str | None = None,
        exact_key: Any = None,
        proxy: bool = False,
    ) -> Callable[[F], F]:
        """Answer the decorated view on the worker that actively holds the key.

        The key comes from the query (``query_param``, or Faust's older name
        ``shard_param``), a path parameter (``match_info``) or is fixed
        (``exact_key``). Another worker answers 307 to the owner's URL (same
        path and query), or forwards the request when ``proxy=True``; while no
        owner is known the answer is 503 with ``Retry-After``. Put it under
        ``@app.page``.
        """
        from ._web.routes import table_route

        return table_route(  # type: ignore[return-value]
            self,
            table,
            shard_param,
            query_param=query_param,
            match_info=match_info,
            exact_key=exact_key,
            proxy=proxy,
        )

    def topic_route(
        self,
        topic: Topic[Any] | str,
        shard_param: str | None = None,
        *,
        query_param: str | None = None,
        match_info: str | None = None,
        exact_key: Any = None,
        proxy: bool = False,
    ) -> Callable[[F], F]:
        """Like :meth:`table_route`, for the worker that consumes the key's partition of ``topic``."""
        from ._web.routes import topic_route

        return topic_route(  # type: ignore[return-value]
            self,
            topic,
            shard_param,
            query_param=query_param,
            match_info=match_info,
            exact_key=exact_key,
            proxy=proxy,
        )

    @property
    def router(self) -> Router:
        """Find the worker that holds a key; route requests to it."""
        return self._router

    @property
    def web(self) -> WebServer:
        """This worker's web server (``app.web.url`` is its canonical URL once bound)."""
        return self._web

    @property
    def http_client(self) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for code running in the worker (open while it runs).

        Raises:
            ClosedError: no worker is running this app.
        """
        return self._web.http_client

    @property
    def cluster(self) -> ClusterMember:
        """This worker's view of the cluster (``app.cluster.map``: partition -> worker)."""
        return self._cluster

    @property
    def monitor(self) -> Monitor:
        """Events/s and commit lag, as served by ``/stats/``."""
        return self._monitor

    # -- sending -------------------------------------------------------------------

    async def send(
        self,
        channel: Channel[Any] | str,
        key: Any = None,
        value: Any = None,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Headers | None = None,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec | None = None,
        callback: Callable[[FutureMessage], Any] | None = None,
        **kwargs: Any,
    ) -> RecordMetadata:
        """Send a value to a channel, topic or topic name and wait for delivery.

        Extra keyword arguments go to the topic's ``send`` (``reply_to=``,
        ``correlation_id=``).
        """
        target = self._topic_named(channel) if isinstance(channel, str) else channel
        return await target.send(
            **kwargs,
            key=key,
            value=value,
            partition=partition,
            timestamp=timestamp,
            headers=headers,
            key_serializer=key_serializer,
            value_serializer=value_serializer,
            callback=callback,
        )

    def stream(
        self,
        channel: Channel[Any] | Iterable[Any] | AsyncIterator[Any],
        *,
        processors: Iterable[Processor[Any]] | None = None,
        **kwargs: Any,
    ) -> Stream[Any]:
        """A stream over a topic, an in-process channel or a plain (async) iterable.

        A topic stream is read by the task that iterates it (``@app.task``),
        with an agent's acks and commits: it subscribes the topic on the
        running worker at its first step and gets the messages of the
        partitions this worker is assigned. It may be created at module level
        or inside the task (a worker with tasks joins its consumer group).
        See ``docs/agents.md``.

        Args:
            channel: a topic, a channel, or an iterable (handy in tests).
            processors: functions (sync or async) applied to each value in turn.
            **kwargs: Faust's other stream options, accepted and unused.
        """
        if isinstance(channel, Topic):
            from ._topic_stream import WorkerTopicSource

            if channel not in self._streamed_topics:
                self._streamed_topics.append(channel)
            label = f"stream({channel.label})"
            source: WorkerTopicSource[Any] = WorkerTopicSource(self, channel, label)
            source.stream = Stream(source, app=self, label=label, processors=processors)
            return source.stream
        if isinstance(channel, Channel):
            return Stream(
                ChannelSource(channel._subscribe()), app=self, label=channel.label, processors=processors
            )
        return Stream(IterableSource(self, channel), app=self, label="iterable", processors=processors)

    # -- runtime access -------------------------------------------------------------

    @property
    def producer(self) -> Producer:
        return self._require_producer()

    @property
    def transport(self) -> Transport:
        return self._transport()

    def _transport(self) -> Transport:
        if self._transport_obj is None:
            self._transport_obj = create_transport(self.conf.broker, self.conf)
        return self._transport_obj

    def _require_producer(self) -> Producer:
        producer = self._producer
        if producer is None:
            raise ClosedError(
                f"app {self.id!r} has no running producer: send from a running worker "
                "(agents, timers, tasks) or open one with `async with app.open_client():`"
            )
        return producer

    @asynccontextmanager
    async def open_client(self) -> AsyncIterator[App]:
        """Open a producer for this app without running a worker (scripts, CLI, tests).

        The app's topics are created first if they do not exist, as a worker would.
        """
        if self._producer is not None:
            yield self
            return
        await self.declare_topics()
        async with self._transport().open_producer() as producer, trio.open_nursery() as nursery:
            self._producer = producer
            try:
                await nursery.start(self._rpc.serve, None)
                yield self
            finally:
                self._producer = None
                nursery.cancel_scope.cancel()

    def is_leader(self) -> bool:
        """Whether this worker is the leader (owns partition 0 of the leader topic)."""
        worker = self._worker
        return worker is not None and TP(self.leader_topic_name, 0) in worker.assigned

    @property
    def leader_topic_name(self) -> str:
        return f"{self.id}-__assignor-__leader"

    async def declare_topics(self) -> list[str]:
        """Create the app's topics that do not exist yet; returns the names created."""
        specs: dict[str, TopicSpec] = {}
        internal: set[str] = set()
        for topic in self._declared_topics():
            for name in topic.topics:
                specs.setdefault(name, topic.spec(name))
                if topic.internal:
                    internal.add(name)
        created = await self._transport().create_topics(list(specs.values()))
        if mine := sorted(set(created) - internal):
            log.info("created topics: %s", ", ".join(mine))
        if theirs := sorted(set(created) & internal):
            log.debug("created internal topics: %s", ", ".join(theirs))
        return created

    def _needs_group(self) -> bool:
        """Whether a worker joins the consumer group: topic agents, leader timers, topic
        streams, or tasks (which may open a topic stream at run time, as Faust's
        ``async for v in topic.stream()`` in an ``@app.task`` does: a Faust worker
        always joins its group)."""
        return (
            any(isinstance(a.channel, Topic) for a in self.agents.values())
            or any(t.on_leader for t in self._timers)
            or bool(self._streamed_topics)
            or bool(self._tasks)
        )

    def _declared_topics(self) -> list[Topic[Any]]:
        """Every named topic the app uses, created at start if missing."""
        self.tables.declare_writes_topics()
        topics = [t for t in self._topics if t.pattern is None]
        if self._needs_group():
            topics.append(
                Topic(
                    self,
                    topics=[self.leader_topic_name],
                    partitions=1,
                    internal=True,
                    value_serializer="raw",
                )
            )
        # Dead-letter topics are created when first needed (see _dead_letters.py).
        return topics

    def _dead_letter(
        self, message: Message, error: BaseException, *, reason: str, event: Event[Any] | None = None
    ) -> None:
        """Send the raw message and the error to the dead-letter topic.

        The dead letter is an output of ``event`` (default: the event being
        processed): the event is done only once it is delivered. A failed
        dead letter stops the worker (:class:`DeadLetterError`).
        """
        topic = self.conf.dead_letter_topic or f"{message.topic}-dlq"
        headers = list(message.headers or [])
        headers += [
            ("streamtrio-error", f"{type(error).__name__}: {error}".encode()),
            ("streamtrio-reason", reason.encode()),
            ("streamtrio-topic", message.topic.encode()),
            ("streamtrio-partition", str(message.partition).encode()),
            ("streamtrio-offset", str(message.offset).encode()),
        ]
        done = output_started(event)
        where = f"{message.topic}[{message.partition}]@{message.offset}"

        def delivered(metadata: RecordMetadata | None, failure: ProducerError | None) -> None:
            if failure is not None:
                failure = DeadLetterError(f"cannot dead-letter {where} to {topic!r}: {failure}")
                worker = self._worker
                if worker is not None:
                    worker.crash(failure)
            if done is not None:
                done(failure)

        self._dead_letters.send_nowait(topic, message, headers, delivered, event=event)
        log.warning("dead-lettered %s to %s (%s): %s", where, topic, reason, error)

    def _banner(self) -> str:
        conf = self.conf
        lines = [f"streamtrio {__version__} - app {self.id!r}"]
        lines.append(f"  broker    {conf.broker}")
        lines.append(f"  group     {self.id}")
        place = supervised()
        if place is not None:
            lines.append(f"  process   worker-{place[0]} ({place[0] + 1} of {place[1]}), pid {os.getpid()}")
        if self.agents:
            for agent in self.agents.values():
                lines.append(
                    f"  agent     {agent.name} <- {agent.channel.label} (concurrency {agent.concurrency})"
                )
        else:
            lines.append("  agents    none")
        # The app's own topics; internal ones (group leader, cluster map, changelogs) at debug level.
        verbose = log.isEnabledFor(logging.DEBUG)
        names = sorted({n for t in self._declared_topics() if verbose or not t.internal for n in t.topics})
        if names:
            lines.append(f"  topics    {', '.join(names)}")
        for timer in self._timers:
            lines.append(f"  timer     {timer.name} every {timer.interval:g}s")
        if self._table_manager is not None:
            for table in self._table_manager.values():
                changelog = f"{table.changelog_topic_name}[{table.partitions}]"
                lines.append(f"  table     {table.name} -> {changelog}")
            lines.append(f"  store     {conf.store} in {conf.data_path}")
        if conf.web_enabled:
            lines.append(f"  web       {self._web.url or 'starting'}")
        else:
            lines.append("  web       disabled")
        return "\n".join(lines)

    def main(self, argv: list[str] | None = None) -> None:
        """Run the streamtrio command line with this app (``python myapp.py run``)."""
        from ._cli import build_click

        build_click(self)(args=argv, prog_name=None)

    def __repr__(self) -> str:
        return f"<App {self.id!r} broker={self.conf.broker!r}>"
