"""Kafka client set-up shared by the consumer, producer and reader, and topic admin.

Settings become librdkafka options here (:func:`consumer_config`,
:func:`producer_config`, :func:`reader_config`), librdkafka's errors become
streamtrio exceptions (:func:`new_client`, :func:`broker_unavailable`), and
:class:`KafkaAdmin` creates and inspects topics.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from .._exceptions import BrokerUnavailableError, ConfigurationError, TopicError, reraise_unwrapped
from .._partitioner import LIBRDKAFKA_NAMES
from .._types import TopicSpec
from .base import BrokerWait

if TYPE_CHECKING:
    from .._settings import Settings

__all__ = [
    "KafkaAdmin",
    "broker_unavailable",
    "consumer_config",
    "new_client",
    "parse_bootstrap",
    "producer_config",
    "reader_config",
    "reraise_unwrapped",
]

log = logging.getLogger("streamtrio.kafka")
#: librdkafka's own log lines, forwarded to Python logging.
rdkafka_log = logging.getLogger("streamtrio.kafka.librdkafka")

_DEFAULT_PORT = 9092
# Options streamtrio sets itself because its correctness depends on them.
_MANAGED = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "transactional.id",
        "on_delivery",
        "error_cb",
        "logger",
    }
)

T = TypeVar("T")


def parse_bootstrap(url: str) -> str:
    """``kafka://host:port[;host2:port]`` -> librdkafka's ``host:port,host2:port``.

    Raises:
        ConfigurationError: the URL is not a ``kafka://`` URL with at least one host.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "kafka":
        raise ConfigurationError(f"broker URL {url!r}: expected kafka://host:port[;host:port]")
    hosts = []
    for part in rest.replace(",", ";").split(";"):
        host = part.strip().rstrip("/")
        if not host:
            continue
        if ":" not in host.rsplit("]", 1)[-1]:
            host = f"{host}:{_DEFAULT_PORT}"
        hosts.append(host)
    if not hosts:
        raise ConfigurationError(f"broker URL {url!r}: no host given")
    return ",".join(hosts)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _user_options(settings: Settings, *names: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in names:
        extra: Mapping[str, Any] = getattr(settings, name)
        for key, value in extra.items():
            if key in _MANAGED:
                raise ConfigurationError(
                    f"setting {name!r}: librdkafka option {key!r} is managed by streamtrio "
                    "and cannot be overridden"
                )
            options[key] = value
    return options


#: A broker that does not answer is asked again (and the wait logged) this often, in seconds.
CONNECT_ATTEMPT = 5.0

#: The default ``transaction.timeout.ms`` (seconds), or three commit intervals if longer.
_TRANSACTION_TIMEOUT = 10.0


def _base_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "client.id": settings.broker_client_id,
        "logger": rdkafka_log,
        "error_cb": _log_client_error,
    }


#: ``fetch.wait.max.ms`` of a worker's group consumer, in milliseconds.
GROUP_FETCH_WAIT_MS = 50


def consumer_config(settings: Settings, bootstrap: str, group_id: str) -> dict[str, Any]:
    """librdkafka options of a group consumer."""
    config = _base_config(settings, bootstrap)
    config.update(
        {
            "group.id": group_id,
            "session.timeout.ms": _ms(settings.broker_session_timeout),
            "heartbeat.interval.ms": _ms(settings.broker_heartbeat_interval),
            "max.poll.interval.ms": _ms(settings.broker_max_poll_interval),
            "auto.offset.reset": settings.consumer_auto_offset_reset,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "partition.assignment.strategy": settings.consumer_partition_assignment_strategy,
            # A broker that answers with a whole partition per fetch (Tansu)
            # overfills the prefetch queue; the default 1 s back-off then halves
            # throughput.
            "fetch.queue.backoff.ms": 10,
            # A partition the worker resumes (its lane drained, see
            # Worker.on_lane_drained) lost its prefetched messages when it was
            # paused (librdkafka purges them), and its next fetch can wait
            # behind one the broker holds for this long: with librdkafka's
            # 500 ms, every lane ran dry and the worker idled for up to half a
            # second, a fifth of a backlog's throughput (docs/benchmarks.md).
            # An idle consumer fetches 20 times a second per broker instead of 2.
            "fetch.wait.max.ms": GROUP_FETCH_WAIT_MS,
            # A subscribed topic the broker did not list yet is looked up again
            # only at this interval (librdkafka's default is 5 minutes).
            "topic.metadata.refresh.interval.ms": 10_000,
        }
    )
    if settings.consumer_group_instance_id:
        config["group.instance.id"] = settings.consumer_group_instance_id
    config.update(_user_options(settings, "broker_config", "consumer_config"))
    if settings.consumer_group_protocol == "consumer" or config.get("group.protocol") == "consumer":
        # KIP-848: the broker assigns and keeps the session; librdkafka
        # refuses the classic protocol's client-side settings.
        config["group.protocol"] = "consumer"
        for key in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
            config.pop(key, None)
    _read_committed(settings, config)
    return config


def _read_committed(settings: Settings, config: dict[str, Any]) -> None:
    # librdkafka's default, made explicit: under exactly_once a reader must
    # never see messages of open or aborted transactions.
    if settings.processing_guarantee == "exactly_once":
        config["isolation.level"] = "read_committed"


#: ``fetch.wait.max.ms`` of a reader with ``prompt_end`` (table recovery), in milliseconds.
PROMPT_END_WAIT_MS = 10


def reader_config(settings: Settings, bootstrap: str, *, prompt_end: bool = False) -> dict[str, Any]:
    """librdkafka options of a manually assigned reader (outside any group).

    With ``prompt_end`` the broker holds a fetch that finds nothing new for
    :data:`PROMPT_END_WAIT_MS` instead of librdkafka's 500 ms: the end of a
    partition is an empty fetch answer, so a recovery waited up to half a
    second after its last record for the last of its partitions to end.
    """
    config = _base_config(settings, bootstrap)
    config.update(
        {
            # librdkafka requires a group.id even for manual assignment; a
            # unique one that is never committed to keeps the reader alone.
            "group.id": f"{settings.broker_client_id}-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 10,
        }
    )
    if prompt_end:
        config["fetch.wait.max.ms"] = PROMPT_END_WAIT_MS
    if settings.consumer_group_instance_id:
        config["group.instance.id"] = settings.consumer_group_instance_id
    config.update(_user_options(settings, "broker_config", "consumer_config"))
    if settings.consumer_group_protocol == "consumer" or config.get("group.protocol") == "consumer":
        # KIP-848: the broker assigns and keeps the session; librdkafka
        # refuses the classic protocol's client-side settings.
        config["group.protocol"] = "consumer"
        for key in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
            config.pop(key, None)
    _read_committed(settings, config)
    return config


def producer_config(
    settings: Settings, bootstrap: str, *, transactional_id: str | None = None
) -> dict[str, Any]:
    """librdkafka options of a producer (transactional when ``transactional_id`` is given).

    Raises:
        ConfigurationError: a transactional producer with ``producer_acks`` other than ``all``.
    """
    config = _base_config(settings, bootstrap)
    config.update(
        {
            "linger.ms": settings.producer_linger_ms,
            "compression.type": settings.producer_compression_type,
            "acks": settings.producer_acks,
            # The app's partitioner (the Java client's murmur2 by default), so
            # a keyed message lands where the tables and the router look for it.
            "partitioner": LIBRDKAFKA_NAMES[settings.partitioner],
        }
    )
    config.update(_user_options(settings, "broker_config", "producer_config"))
    if transactional_id is not None:
        if str(config.get("acks")) not in ("all", "-1"):
            raise ConfigurationError(
                f"a transactional producer needs producer_acks='all', got {config.get('acks')!r}"
            )
        config["transactional.id"] = transactional_id
        config["enable.idempotence"] = True
        if "transaction.timeout.ms" not in config:
            # A worker that died or was cut off with a transaction open holds
            # back read_committed readers of its partitions' new owner until the
            # broker aborts it: librdkafka's 60 s default is far too long (Kafka
            # Streams uses 10 s). It must outlast a commit interval's steps.
            config["transaction.timeout.ms"] = _ms(max(_TRANSACTION_TIMEOUT, 3 * settings.commit_interval))
    return config


def admin_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """librdkafka options of the admin client."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": settings.broker_client_id,
        # Nothing polls the admin client, so its log cannot go through Python
        # logging (lines would pile up unpolled); at librdkafka's default level
        # it writes every failed connection attempt to stderr. Its failures
        # reach the caller as exceptions (BrokerUnavailableError, TopicError).
        "log_level": 2,
    }
    config.update(_user_options(settings, "broker_config"))
    return config


def new_client(factory: Callable[[dict[str, Any]], T], config: dict[str, Any], what: str) -> T:
    """Create a confluent-kafka client, turning a bad option into a ConfigurationError.

    Raises:
        ConfigurationError: librdkafka rejected an option (the message names it).
    """
    try:
        return factory(config)
    except KafkaException as exc:
        raise ConfigurationError(
            f"invalid librdkafka option for the Kafka {what} (check the broker_config, "
            f"consumer_config and producer_config settings): {_reason(exc)}"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid librdkafka option for the Kafka {what}: {exc}") from exc


def broker_unavailable(bootstrap: str, timeout: float, exc: KafkaException) -> BrokerUnavailableError:
    """The error raised when the broker does not answer within ``timeout``."""
    error = BrokerUnavailableError(
        f"cannot reach the Kafka broker at {bootstrap} within {timeout:g}s: {_reason(exc)}"
    )
    error.__cause__ = exc
    return error


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        return f"{err.str()} ({err.name()})"
    return str(exc)


def _log_client_error(err: KafkaError) -> None:
    # Global client errors (broker down, authentication) are retried by
    # librdkafka; fatal ones also surface through the calls that fail. A lost
    # connection is already in librdkafka's own log.
    if err.fatal():
        level = logging.ERROR
    elif err.code() == KafkaError._TRANSPORT:
        level = logging.DEBUG
    else:
        level = logging.WARNING
    log.log(level, "Kafka client error: %s (%s)", err.str(), err.name())


class KafkaAdmin:
    """Topic creation and inspection through a confluent ``AdminClient``.

    The admin client is thread-safe and resolves its futures on its own
    thread; every blocking wait runs in a worker thread with a deadline of
    ``settings.broker_request_timeout``.
    """

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._client: Any = None
        self._connected = False
        #: a topic known to exist, for the broker watch's probe (None: ask for all)
        self._probe_topic: str | None = None
        #: the wait for the broker while the first request is unanswered (read by the display)
        self.connecting: BrokerWait | None = None

    def _admin(self) -> Any:
        if self._client is None:
            self._client = new_client(
                AdminClient, admin_config(self._settings, self._bootstrap), "admin client"
            )
        return self._client

    async def probe(self, within: float) -> str | None:
        """Ask for one topic's metadata; ``None`` if the broker answered in time.

        A metadata request, as at start-up (not an Admin API request:
        librdkafka 2.16 asserts in ``rd_kafka_admin_response_parse`` when a
        DescribeCluster answer arrives after its timeout, which a frozen broker
        causes). One known topic keeps the answer small on big clusters.
        """
        admin = self._admin()
        topic = self._probe_topic

        def call() -> str | None:
            try:
                admin.list_topics(topic=topic, timeout=within)
            except KafkaException as exc:
                return _reason(exc)
            return None

        # A thread stuck past the timeout is let go (librdkafka's own timeout
        # ends it); the watch asks again later.
        with trio.move_on_after(within + 2.0):
            return await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        return f"no answer within {within:g}s"

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        """Partition counts of the existing topics among ``topics``."""
        existing = await self._list_topics()
        counts = {name: existing[name] for name in topics if name in existing}
        if counts and self._probe_topic is None:
            self._probe_topic = min(counts)
        return counts

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create the missing topics among ``specs``; return the names created."""
        existing = await self._list_topics()
        known = sorted(spec.name for spec in specs if spec.name in existing)
        if known and self._probe_topic is None:
            self._probe_topic = known[0]
        missing: dict[str, TopicSpec] = {}
        for spec in specs:
            if spec.name not in existing and spec.name not in missing:
                missing[spec.name] = spec
        if not missing:
            return []
        admin = self._admin()
        timeout = self._settings.broker_request_timeout
        new_topics = [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=spec.replication_factor,
                config={k: str(v) for k, v in spec.config.items()},
            )
            for spec in missing.values()
        ]
        try:
            futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
        except KafkaException as exc:
            raise TopicError(f"cannot create topics {sorted(missing)}: {_reason(exc)}") from exc

        def wait() -> list[str]:
            created: list[str] = []
            for name, future in futures.items():
                try:
                    future.result(timeout=timeout)
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                        continue
                    if isinstance(err, KafkaError) and err.code() in (
                        KafkaError._TRANSPORT,
                        KafkaError._TIMED_OUT,
                        KafkaError._ALL_BROKERS_DOWN,
                    ):
                        raise broker_unavailable(self._bootstrap, timeout, exc) from exc
                    raise TopicError(
                        f"cannot create topic {name!r} ({missing[name].partitions} partitions): "
                        f"{_reason(exc)}"
                    ) from exc
                except TimeoutError as exc:
                    raise BrokerUnavailableError(
                        f"the Kafka broker at {self._bootstrap} did not confirm the creation "
                        f"of topic {name!r} within {timeout:g}s"
                    ) from exc
                created.append(name)
            return created

        created = await trio.to_thread.run_sync(
            wait, thread_name="streamtrio-kafka-admin", abandon_on_cancel=True
        )
        if created:
            await self._wait_visible({name: missing[name].partitions for name in created})
            log.debug("created topics %s", ", ".join(created))
            if self._probe_topic is None:
                self._probe_topic = min(created)
        return created

    async def _wait_visible(self, expected: dict[str, int]) -> None:
        """Wait until the broker's metadata lists every created topic with all its partitions.

        A broker may confirm a creation before its metadata shows the topic; a
        consumer subscribing in between would not be assigned it until its next
        metadata refresh.
        """
        timeout = self._settings.broker_request_timeout
        with trio.move_on_after(timeout):
            while True:
                listed = await self._list_topics()
                if all(listed.get(name) == count for name, count in expected.items()):
                    return
                await trio.sleep(0.05)
        raise BrokerUnavailableError(
            f"the Kafka broker at {self._bootstrap} created {sorted(expected)} but did not list "
            f"them within {timeout:g}s"
        )

    async def _list_topics(self) -> dict[str, int]:
        admin = self._admin()
        timeout = self._settings.broker_request_timeout
        first = not self._connected
        given_up = threading.Event()

        def call() -> dict[str, int]:
            # In attempts of at most CONNECT_ATTEMPT seconds, each one that
            # fails logged: an unreachable broker is never a silent wait.
            started = time.monotonic()
            deadline = started + timeout
            attempt = 1
            url = f"kafka://{self._bootstrap}"
            if first:
                log.info("connecting to %s", url)
            try:
                while True:
                    wait = max(min(CONNECT_ATTEMPT, deadline - time.monotonic()), 0.1)
                    if first:
                        self.connecting = BrokerWait(url, attempt, started)
                    try:
                        metadata = admin.list_topics(timeout=wait)
                        break
                    except KafkaException as exc:
                        waited = time.monotonic() - started
                        if waited >= timeout or given_up.is_set():
                            raise broker_unavailable(self._bootstrap, timeout, exc) from exc
                        log.warning(
                            "connecting to %s (attempt %d, %.0fs of broker_request_timeout=%gs): %s",
                            url,
                            attempt,
                            waited,
                            timeout,
                            _reason(exc),
                        )
                        attempt += 1
            finally:
                if first:
                    self.connecting = None
            if attempt > 1:
                log.info("connected to %s after %.0fs", url, time.monotonic() - started)
            self._connected = True
            return {
                name: len(topic.partitions) for name, topic in metadata.topics.items() if topic.error is None
            }

        # Let go on cancel (a stop while connecting): the abandoned attempt
        # ends within CONNECT_ATTEMPT seconds and tries no more.
        try:
            return await trio.to_thread.run_sync(
                call, thread_name="streamtrio-kafka-admin", abandon_on_cancel=True
            )
        finally:
            given_up.set()
