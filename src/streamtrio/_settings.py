"""App settings: declared defaults, ``STREAMTRIO_*`` environment variables,
``config_from_object`` and validation that names the offending setting.

Precedence, lowest first: defaults, environment, ``config_from_object``,
keyword arguments to :class:`~streamtrio.App`.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError

__all__ = [
    "FAUST_SETTINGS",
    "SETTINGS",
    "FaustCompatibilityWarning",
    "Settings",
    "UnknownEnvironmentSettingWarning",
    "parse_duration",
]

_ENV_PREFIX = "STREAMTRIO_"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object, *, name: str = "duration") -> float:
    """Seconds from a float/int, a ``timedelta`` or a string like ``"1m"``/``"250ms"``.

    Raises:
        ConfigurationError: the value is not a duration.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
            if text.endswith(unit):
                number = text[: -len(unit)].strip()
                try:
                    return float(number) * _DURATION_UNITS[unit]
                except ValueError:
                    break
        else:
            try:
                return float(text)
            except ValueError:
                pass
    raise ConfigurationError(
        f"{name}: expected a duration (seconds, timedelta or a string like '1m'), got {value!r}"
    )


@dataclass(frozen=True, slots=True)
class _Option:
    name: str
    default: Any
    kind: str  # str | int | float | bool | duration | choice | dict | path | url
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


def _options() -> dict[str, _Option]:
    opts = [
        _Option(
            "broker",
            "kafka://localhost:9092",
            "url",
            "Broker URL: kafka://host:port[;host:port] or memory://",
        ),
        _Option("store", "lmdb://", "url", "Table store URL: lmdb:// or memory://"),
        _Option("datadir", "{appid}-data", "path", "Worker data directory ({appid} is replaced)"),
        _Option(
            "topic_partitions",
            8,
            "int",
            "Default partition count of topics the app creates",
            minimum=1,
        ),
        _Option(
            "topic_replication_factor",
            1,
            "int",
            "Replication factor of topics the app creates",
            minimum=-1,
        ),
        _Option("commit_interval", 2.8, "duration", "Seconds between offset commits", minimum=0.001),
        _Option(
            "stream_buffer_maxsize",
            # Above consumer_max_batch: a smaller lane is paused by every batch
            # fetched and resumed soon after, which cost a third of the
            # throughput on the benchmark (docs/benchmarks.md).
            16384,
            "int",
            "Events buffered per partition before it is paused (keep it above consumer_max_batch)",
            minimum=1,
        ),
        _Option(
            "gc_threshold",
            100_000,
            "int",
            "While a worker runs, Python's first garbage-collector threshold is at least this"
            " (Python's default: 700; 0 leaves it alone)",
            minimum=0,
        ),
        _Option(
            "processing_guarantee",
            "at_least_once",
            "choice",
            "at_least_once or exactly_once",
            choices=("at_least_once", "exactly_once"),
        ),
        _Option(
            "worker_id",
            None,
            "str",
            "Stable id of this worker (exactly_once transactional id); default: kept in the data dir",
        ),
        _Option("web_enabled", True, "bool", "Serve the web app in each worker"),
        _Option("web_host", "localhost", "str", "Host name other workers use to reach this one"),
        _Option("web_bind", "0.0.0.0", "str", "Address the web server binds"),
        _Option("web_port", 6066, "int", "Web server port (0 picks a free one)", minimum=0),
        _Option(
            "metrics_port",
            None,
            "int",
            "Port of a server for GET /metrics alone, for apps with web_enabled=False "
            "(0 picks a free one; with the web server on, /metrics is served there)",
            minimum=0,
        ),
        _Option("web_canonical_url", None, "str", "URL other workers use to reach this one"),
        _Option("key_serializer", "raw", "str", "Default codec for keys: raw, json or msgpack"),
        _Option(
            "partitioner",
            "murmur2",
            "choice",
            "How keys map to partitions, for the producer, tables and the web router: murmur2 "
            "(the Java client's), or librdkafka's consistent_random (its default), consistent/crc32, "
            "murmur2_random, fnv1a, fnv1a_random",
            choices=(
                "murmur2",
                "murmur2_random",
                "consistent",
                "crc32",
                "consistent_random",
                "fnv1a",
                "fnv1a_random",
            ),
        ),
        _Option("value_serializer", "json", "str", "Default codec for values: raw, json or msgpack"),
        _Option(
            "value_decode_error",
            "raise",
            "choice",
            "What to do with a value that cannot be decoded: raise, skip or dead_letter",
            choices=("raise", "skip", "dead_letter"),
        ),
        _Option("dead_letter_topic", None, "str", "Dead-letter topic (default <topic>-dlq)"),
        _Option(
            "changelog_serializer",
            "msgpack",
            "str",
            "Default codec of table changelog values (json: as Faust writes them)",
        ),
        _Option(
            "faust_agent_topic_names",
            False,
            "bool",
            "Name topic-less agents' topics <id>-<module>.<function>, as Faust does",
        ),
        _Option(
            "shutdown_timeout",
            30.0,
            "duration",
            "Seconds to drain and commit on shutdown",
            minimum=0.0,
        ),
        _Option(
            "agent_restart_backoff",
            1.0,
            "duration",
            "First restart delay of on_error='restart' agents",
            minimum=0.0,
        ),
        _Option("agent_restart_backoff_max", 30.0, "duration", "Largest restart delay", minimum=0.0),
        _Option("ask_timeout", 30.0, "duration", "Seconds agent.ask() waits for a reply", minimum=0.0),
        _Option(
            "rebalance_drain_timeout",
            30.0,
            "duration",
            "Seconds in-flight events may take on revoke",
            minimum=0.0,
        ),
        # Kafka client settings
        _Option("broker_client_id", "streamtrio", "str", "client.id for the Kafka clients"),
        _Option(
            "broker_session_timeout",
            45.0,
            "duration",
            "session.timeout.ms, in seconds",
            minimum=0.1,
        ),
        _Option(
            "broker_heartbeat_interval",
            3.0,
            "duration",
            "heartbeat.interval.ms, in seconds",
            minimum=0.01,
        ),
        _Option(
            "broker_max_poll_interval",
            300.0,
            "duration",
            "max.poll.interval.ms, in seconds",
            minimum=1.0,
        ),
        _Option(
            "broker_commit_interval",
            2.8,
            "duration",
            "Alias of commit_interval kept for Faust users",
            minimum=0.001,
        ),
        _Option(
            "broker_request_timeout",
            30.0,
            "duration",
            "Start-up and admin request deadline, seconds",
            minimum=0.1,
        ),
        _Option(
            "consumer_auto_offset_reset",
            "earliest",
            "choice",
            "Where a new group starts",
            choices=("earliest", "latest"),
        ),
        _Option("consumer_max_batch", 10000, "int", "Messages fetched per batch at most", minimum=1),
        _Option(
            "consumer_group_protocol",
            "classic",
            "choice",
            "group.protocol: classic, or consumer (KIP-848: the broker assigns, always incremental)",
            choices=("classic", "consumer"),
        ),
        _Option(
            "consumer_partition_assignment_strategy",
            "range",
            "choice",
            "partition.assignment.strategy of the classic protocol",
            choices=("range", "roundrobin", "cooperative-sticky"),
        ),
        _Option(
            "consumer_group_instance_id",
            None,
            "str",
            "group.instance.id: static membership (unique per worker process; a restart within "
            "broker_session_timeout keeps the partitions without a rebalance)",
        ),
        _Option("producer_linger_ms", 5.0, "float", "linger.ms of the producer", minimum=0.0),
        _Option(
            "producer_compression_type",
            "none",
            "choice",
            "compression.type of the producer",
            choices=("none", "gzip", "snappy", "lz4", "zstd"),
        ),
        _Option(
            "producer_acks",
            "all",
            "choice",
            "acks of the producer",
            choices=("0", "1", "all", "-1"),
        ),
        _Option(
            "producer_max_queued_bytes",
            64 * 1024 * 1024,
            "int",
            "Bytes (keys and values) a worker's producer holds undelivered before agents wait",
            minimum=1,
        ),
        _Option(
            "producer_max_queued_messages",
            200_000,
            "int",
            "Messages a worker's producer holds undelivered before agents wait",
            minimum=1,
        ),
        _Option("broker_config", {}, "dict", "Extra librdkafka options for every client"),
        _Option("consumer_config", {}, "dict", "Extra librdkafka options for consumers"),
        _Option("producer_config", {}, "dict", "Extra librdkafka options for producers"),
        # Tables
        _Option("table_standby_replicas", 1, "int", "Standby replicas per table partition", minimum=0),
        _Option(
            "table_recovery_timeout",
            120.0,
            "duration",
            "Seconds a stalled recovery may take",
            minimum=0.1,
        ),
        _Option(
            "table_changelog_eager",
            False,
            "bool",
            "Produce every table write at once (Faust style)",
        ),
        _Option(
            "table_cleanup_interval",
            1.0,
            "duration",
            "Seconds between checks that close expired windows of windowed tables",
            minimum=0.001,
        ),
        _Option("lmdb_map_size", 1 << 30, "int", "LMDB initial map size in bytes", minimum=1 << 20),
        _Option(
            "lmdb_max_map_size",
            1 << 40,
            "int",
            "LMDB map growth limit in bytes (the map doubles when full, up to this)",
            minimum=1 << 20,
        ),
        _Option("lmdb_sync", True, "bool", "fsync LMDB on each commit"),
    ]
    return {o.name: o for o in opts}


SETTINGS: dict[str, _Option] = _options()


class FaustCompatibilityWarning(UserWarning):
    """A Faust setting or option that streamtrio accepts but does not act on (or maps)."""


# Faust's documented settings that have no streamtrio counterpart. They are
# accepted (a Faust app runs with `import streamtrio as faust`) and warned
# about once per process; a name in neither table is still refused, so a
# misspelling does not pass silently. The value says what to do instead.
FAUST_SETTINGS: dict[str, str] = {
    name: hint
    for names, hint in (
        (
            "autodiscover origin id_format env env_prefix debug timezone loghandlers"
            " logging_config blocking_timeout worker_redirect_stdouts"
            " worker_redirect_stdouts_level crash_app",
            "",
        ),
        ("version", "a version above 1 makes the app id '<id>-v<version>', as in Faust"),
        ("tabledir store_check_exists table_key_index_size", "tables live in 'datadir'"),
        (
            "reply_to reply_to_prefix reply_create_topic reply_expires",
            "agent.ask() replies use the app's own reply topic",
        ),
        (
            "broker_api_version broker_check_crcs broker_max_poll_records broker_rebalance_timeout"
            " broker_commit_every broker_commit_livelock_soft_timeout broker_consumer broker_producer"
            " consumer_api_version consumer_max_fetch_size consumer_metadata_max_age_ms"
            " consumer_connections_max_idle_ms consumer_group_instance_id producer_api_version"
            " producer_max_batch_size producer_max_request_size producer_metadata_max_age_ms"
            " producer_connections_max_idle_ms producer_partitioner producer_request_timeout"
            " producer_threaded",
            "pass librdkafka options in broker_config / consumer_config / producer_config",
        ),
        (
            "broker_credentials ssl_context",
            "pass security.protocol, sasl.* and ssl.* librdkafka options in broker_config",
        ),
        (
            "stream_processing_timeout stream_publish_on_commit stream_recovery_delay"
            " stream_wait_empty stream_ack_cancelled_tasks stream_ack_exceptions"
            " topic_allow_declare topic_disable_leader",
            "",
        ),
        ("web web_transport web_in_thread web_cors_options web_ssl_context", ""),
        (
            "cache agent_supervisor Agent ConsumerScheduler Event Schema Stream Table SetTable"
            " GlobalTable SetGlobalTable TableManager Serializers Worker PartitionAssignor"
            " LeaderAssignor Router Topic HttpClient Monitor",
            "streamtrio's own classes are used",
        ),
    )
    for name in names.split()
}

# Faust names that map onto a streamtrio setting (value converted).
_FAUST_ALIASES: dict[str, tuple[str, Any]] = {
    "url": ("broker", lambda v: v),
    "canonical_url": ("web_canonical_url", lambda v: v),
    # Faust's producer_linger is in seconds
    "producer_linger": ("producer_linger_ms", lambda v: parse_duration(v, name="producer_linger") * 1000.0),
}

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, FaustCompatibilityWarning, stacklevel=4)


def _broker_url(value: Any, source: str) -> Any:
    """Faust's broker forms: a list of URLs, and the aiokafka:// / confluent:// schemes."""
    if isinstance(value, list | tuple):
        hosts = [str(v).split("://", 1)[-1] for v in value]
        scheme = str(value[0]).split("://", 1)[0] if value and "://" in str(value[0]) else "kafka"
        value = f"{scheme}://{';'.join(hosts)}"
    if isinstance(value, str):
        scheme, sep, rest = value.partition("://")
        if sep and scheme.lower() in ("aiokafka", "confluent"):
            _warn_once(
                f"broker:{scheme}",
                f"broker {value!r} (from {source}): {scheme}:// is served by streamtrio's kafka:// "
                "transport (confluent-kafka)",
            )
            value = f"kafka://{rest}"
    return value


def _store_url(value: Any, source: str) -> Any:
    """``rocksdb://`` (Faust's persistent store) runs on LMDB, streamtrio's persistent store."""
    if isinstance(value, str):
        scheme, sep, rest = value.partition("://")
        if sep and scheme.lower() == "rocksdb":
            _warn_once(
                "store:rocksdb",
                f"store {value!r} (from {source}): streamtrio keeps table state in LMDB; "
                "using lmdb:// (state is rebuilt from the changelog topics on first start)",
            )
            value = f"lmdb://{rest}"
    return value


def _coerce(opt: _Option, value: Any, source: str) -> Any:
    where = f"setting {opt.name!r} (from {source})"
    if value is None and opt.default is None:
        return None
    kind = opt.kind
    from_env = source.startswith("environment")
    try:
        if kind == "duration":
            result: Any = parse_duration(value, name=where)
        elif kind == "bool":
            if from_env and isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
            if not isinstance(value, bool):
                raise ConfigurationError(f"{where}: expected true or false, got {value!r}")
            return value
        elif kind == "int":
            if from_env and isinstance(value, str):
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{where}: expected an integer, got {value!r}")
            result = value
        elif kind == "float":
            if from_env and isinstance(value, str):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{where}: expected a number, got {value!r}")
            result = float(value)
        elif kind == "choice":
            text = str(value)
            if text not in opt.choices:
                raise ConfigurationError(f"{where}: expected one of {', '.join(opt.choices)}, got {value!r}")
            return text
        elif kind == "dict":
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{where}: expected a mapping, got {value!r}")
            return dict(value)
        elif kind == "path":
            if not isinstance(value, str | os.PathLike):
                raise ConfigurationError(f"{where}: expected a path, got {value!r}")
            return os.fspath(value)
        else:  # str, url
            if not isinstance(value, str):
                raise ConfigurationError(f"{where}: expected a string, got {value!r}")
            return value
    except ValueError as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"{where}: {exc}") from exc
    if opt.minimum is not None and result < opt.minimum:
        raise ConfigurationError(f"{where}: must be at least {opt.minimum}, got {value!r}")
    return result


#: ``STREAMTRIO_*`` variables that are not settings (the test suite's and the broker fetcher's;
#: ``STREAMTRIO_WORKER_INDEX`` / ``_COUNT`` tell a worker process its place under ``--workers N``).
_ENV_NOT_SETTINGS = (
    "STREAMTRIO_TEST_",
    "STREAMTRIO_KAFKA_",
    "STREAMTRIO_WORKER_INDEX",
    "STREAMTRIO_WORKER_COUNT",
)


class UnknownEnvironmentSettingWarning(UserWarning):
    """A ``STREAMTRIO_*`` environment variable names no setting (a misspelling?)."""


def _check_env_names() -> None:
    """Warn, once per variable, about ``STREAMTRIO_*`` variables that name no setting."""
    known = {_ENV_PREFIX + name.upper() for name in SETTINGS}
    for var in sorted(os.environ):
        if not var.startswith(_ENV_PREFIX) or var in known or var.startswith(_ENV_NOT_SETTINGS):
            continue
        if var in _warned_env:
            continue
        _warned_env.add(var)
        import difflib  # only for a misspelling: not on every App's start

        close = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.warn(
            f"environment variable {var} names no streamtrio setting and is ignored{hint}",
            UnknownEnvironmentSettingWarning,
            stacklevel=4,
        )


_warned_env: set[str] = set()


class Settings:
    """The validated settings of one app. Read them as attributes (``app.conf.broker``)."""

    def __init__(self, appid: str, **options: Any) -> None:
        self.appid = appid
        self._values: dict[str, Any] = {name: opt.default for name, opt in SETTINGS.items()}
        #: Faust-only settings given to this app (kept so that app code can read them back)
        self._faust: dict[str, Any] = {}
        self._from_env()
        self.update(options, source="App() keyword arguments")

    def _from_env(self) -> None:
        _check_env_names()
        for name, opt in SETTINGS.items():
            raw = os.environ.get(_ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if opt.kind == "dict":
                raise ConfigurationError(
                    f"setting {name!r} cannot be given in the environment; use config_from_object"
                )
            self._values[name] = _coerce(opt, raw, f"environment variable {_ENV_PREFIX}{name.upper()}")

    def update(self, options: Mapping[str, Any], *, source: str) -> None:
        """Validate and apply ``options``.

        Raises:
            ConfigurationError: an option is unknown or has a bad value.
        """
        for name, value in options.items():
            if name in _FAUST_ALIASES and name not in SETTINGS:
                target, convert = _FAUST_ALIASES[name]
                name, value = target, convert(value)
            if name == "broker":
                value = _broker_url(value, source)
            elif name == "store":
                value = _store_url(value, source)
            opt = SETTINGS.get(name)
            if opt is None and name in FAUST_SETTINGS:
                hint = FAUST_SETTINGS[name]
                _warn_once(
                    f"setting:{name}",
                    f"setting {name!r} (from {source}) is a Faust setting"
                    + (f": {hint}" if name == "version" else " with no effect in streamtrio")
                    + (f": {hint}" if hint and name != "version" else ""),
                )
                self._faust[name] = value
                continue
            if opt is None:
                close = [n for n in SETTINGS if n.split("_")[0] == name.split("_")[0]]
                hint = f" (did you mean one of: {', '.join(close)}?)" if close else ""
                raise ConfigurationError(f"unknown setting {name!r} in {source}{hint}")
            self._values[name] = _coerce(opt, value, source)
        if "commit_interval" in options and "broker_commit_interval" not in options:
            self._values["broker_commit_interval"] = self._values["commit_interval"]
        elif "broker_commit_interval" in options and "commit_interval" not in options:
            self._values["commit_interval"] = self._values["broker_commit_interval"]

    def config_from_object(self, obj: object) -> None:
        """Read settings from an object's attributes, or a module named by a string.

        Only lower-case attributes that name settings are read; an attribute
        that looks like a setting but is unknown is an error.
        """
        if isinstance(obj, str):
            try:
                obj = importlib.import_module(obj)
            except ImportError as exc:
                raise ConfigurationError(f"config_from_object: cannot import {obj!r}: {exc}") from exc
        if isinstance(obj, Mapping):
            items = dict(obj)
        else:
            items = {
                k: getattr(obj, k)
                for k in dir(obj)
                if not k.startswith("_")
                and k.islower()
                and not callable(getattr(obj, k))
                and not isinstance(getattr(obj, k), type(os))
            }
        self.update(items, source=f"config_from_object({getattr(obj, '__name__', obj)!r})")

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values")
        if values is not None and name in values:
            return values[name]
        faust = self.__dict__.get("_faust")
        if faust is not None and name in faust:
            return faust[name]
        raise AttributeError(f"no setting {name!r}")

    @property
    def data_path(self) -> Path:
        """The worker's data directory, with ``{appid}`` filled in."""
        return Path(str(self._values["datadir"]).replace("{appid}", self.appid))

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @staticmethod
    def help() -> dict[str, str]:
        return {name: opt.help for name, opt in SETTINGS.items()}
