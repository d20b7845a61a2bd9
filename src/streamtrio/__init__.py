"""streamtrio: stream processing for Kafka on trio.

Faust's programming model (apps, agents, topics, channels, tables) on trio's
structured concurrency, with confluent-kafka as the Kafka client.

The public names are imported when first used (PEP 562 ``__getattr__``), so
``import streamtrio`` costs almost nothing and a CLI command, a test or a
``from streamtrio import Record`` loads only what it uses. The imports under
``TYPE_CHECKING`` are the same names for type checkers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._agent import Agent
    from ._app import App
    from ._cluster import ClusterMap, WorkerInfo
    from ._codecs import Codec, Schema, get_codec, register_codec
    from ._commit import CommitStatistics
    from ._exceptions import (
        AgentError,
        AppLoadError,
        AskTimeoutError,
        BrokerUnavailableError,
        ClosedError,
        CodecError,
        CommitError,
        ConfigurationError,
        DecodeError,
        EncodeError,
        ProducerError,
        ProducerFencedError,
        RecoveryTimeoutError,
        StoreError,
        StreamtrioError,
        TableError,
        TopicError,
        TransactionError,
        TransportError,
        ValidationError,
        WorkerError,
    )
    from ._lanes import LaneStatistics
    from ._records import FieldDescriptor, Record, RecordOptions
    from ._run import run, serve
    from ._service import Service
    from ._settings import FaustCompatibilityWarning, Settings, UnknownEnvironmentSettingWarning
    from ._signals import Signal
    from ._stream import Event, Stream, current_event
    from ._tables.manager import TableManager, TableManagerStatistics
    from ._tables.session import SessionSet, SessionWindow, SessionWrapper
    from ._tables.sets import ChangeloggedSet, SetGlobalTable, SetTable
    from ._tables.table import GlobalTable, Table
    from ._tables.timers import KeyTimer
    from ._tables.windowed import WindowSet, WindowWrapper
    from ._tables.windows import HoppingWindow, SlidingWindow, TumblingWindow, Window
    from ._topic import Channel, FutureMessage, Topic
    from ._types import TP, Message, RecordMetadata, TopicSpec
    from ._web.router import NoOwnerError, Router, SameNode, TableNotFoundError
    from ._web.routes import View
    from ._worker import Worker

    # Faust's type names (``faust.StreamT[Order]`` in annotations): here the classes themselves.
    AgentT = Agent
    AppT = App
    ChannelT = Channel
    EventT = Event
    ModelT = Record
    ServiceT = Service
    StreamT = Stream
    TableT = Table
    TopicT = Topic

#: public name -> (module, attribute), imported on first use
_LAZY: dict[str, tuple[str, str]] = {
    "Agent": ("._agent", "Agent"),
    "App": ("._app", "App"),
    "ClusterMap": ("._cluster", "ClusterMap"),
    "WorkerInfo": ("._cluster", "WorkerInfo"),
    "Codec": ("._codecs", "Codec"),
    "Schema": ("._codecs", "Schema"),
    "get_codec": ("._codecs", "get_codec"),
    "register_codec": ("._codecs", "register_codec"),
    "CommitStatistics": ("._commit", "CommitStatistics"),
    "AgentError": ("._exceptions", "AgentError"),
    "AppLoadError": ("._exceptions", "AppLoadError"),
    "AskTimeoutError": ("._exceptions", "AskTimeoutError"),
    "BrokerUnavailableError": ("._exceptions", "BrokerUnavailableError"),
    "ClosedError": ("._exceptions", "ClosedError"),
    "CodecError": ("._exceptions", "CodecError"),
    "CommitError": ("._exceptions", "CommitError"),
    "ConfigurationError": ("._exceptions", "ConfigurationError"),
    "DecodeError": ("._exceptions", "DecodeError"),
    "EncodeError": ("._exceptions", "EncodeError"),
    "ProducerError": ("._exceptions", "ProducerError"),
    "ProducerFencedError": ("._exceptions", "ProducerFencedError"),
    "RecoveryTimeoutError": ("._exceptions", "RecoveryTimeoutError"),
    "StoreError": ("._exceptions", "StoreError"),
    "StreamtrioError": ("._exceptions", "StreamtrioError"),
    "TableError": ("._exceptions", "TableError"),
    "TopicError": ("._exceptions", "TopicError"),
    "TransactionError": ("._exceptions", "TransactionError"),
    "TransportError": ("._exceptions", "TransportError"),
    "ValidationError": ("._exceptions", "ValidationError"),
    "WorkerError": ("._exceptions", "WorkerError"),
    "LaneStatistics": ("._lanes", "LaneStatistics"),
    "FieldDescriptor": ("._records", "FieldDescriptor"),
    "Record": ("._records", "Record"),
    "RecordOptions": ("._records", "RecordOptions"),
    "run": ("._run", "run"),
    "serve": ("._run", "serve"),
    "Service": ("._service", "Service"),
    "FaustCompatibilityWarning": ("._settings", "FaustCompatibilityWarning"),
    "Settings": ("._settings", "Settings"),
    "Signal": ("._signals", "Signal"),
    "Event": ("._stream", "Event"),
    "Stream": ("._stream", "Stream"),
    "current_event": ("._stream", "current_event"),
    "TableManager": ("._tables.manager", "TableManager"),
    "TableManagerStatistics": ("._tables.manager", "TableManagerStatistics"),
    "SessionSet": ("._tables.session", "SessionSet"),
    "SessionWindow": ("._tables.session", "SessionWindow"),
    "SessionWrapper": ("._tables.session", "SessionWrapper"),
    "KeyTimer": ("._tables.timers", "KeyTimer"),
    "ChangeloggedSet": ("._tables.sets", "ChangeloggedSet"),
    "SetGlobalTable": ("._tables.sets", "SetGlobalTable"),
    "SetTable": ("._tables.sets", "SetTable"),
    "GlobalTable": ("._tables.table", "GlobalTable"),
    "Table": ("._tables.table", "Table"),
    "WindowSet": ("._tables.windowed", "WindowSet"),
    "WindowWrapper": ("._tables.windowed", "WindowWrapper"),
    "HoppingWindow": ("._tables.windows", "HoppingWindow"),
    "SlidingWindow": ("._tables.windows", "SlidingWindow"),
    "TumblingWindow": ("._tables.windows", "TumblingWindow"),
    "Window": ("._tables.windows", "Window"),
    "Channel": ("._topic", "Channel"),
    "FutureMessage": ("._topic", "FutureMessage"),
    "Topic": ("._topic", "Topic"),
    "TP": ("._types", "TP"),
    "Message": ("._types", "Message"),
    "RecordMetadata": ("._types", "RecordMetadata"),
    "TopicSpec": ("._types", "TopicSpec"),
    "NoOwnerError": ("._web.router", "NoOwnerError"),
    "Router": ("._web.router", "Router"),
    "SameNode": ("._web.router", "SameNode"),
    "TableNotFoundError": ("._web.router", "TableNotFoundError"),
    "View": ("._web.routes", "View"),
    "Worker": ("._worker", "Worker"),
    "AgentT": ("._agent", "Agent"),
    "AppT": ("._app", "App"),
    "ChannelT": ("._topic", "Channel"),
    "EventT": ("._stream", "Event"),
    "ModelT": ("._records", "Record"),
    "ServiceT": ("._service", "Service"),
    "StreamT": ("._stream", "Stream"),
    "TableT": ("._tables.table", "Table"),
    "TopicT": ("._topic", "Topic"),
    "UnknownEnvironmentSettingWarning": ("._settings", "UnknownEnvironmentSettingWarning"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'streamtrio' has no attribute {name!r}")
    module, attr = target
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value  # later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def uuid() -> str:
    """A new random UUID as a string (Faust's ``faust.uuid()``)."""
    import uuid as _uuid

    return str(_uuid.uuid4())

__all__ = [
    "TP",
    "Agent",
    "AgentError",
    "AgentT",
    "App",
    "AppLoadError",
    "AppT",
    "AskTimeoutError",
    "BrokerUnavailableError",
    "ChangeloggedSet",
    "Channel",
    "ChannelT",
    "ClosedError",
    "ClusterMap",
    "Codec",
    "CodecError",
    "CommitError",
    "CommitStatistics",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "Event",
    "EventT",
    "FaustCompatibilityWarning",
    "FieldDescriptor",
    "FutureMessage",
    "GlobalTable",
    "HoppingWindow",
    "KeyTimer",
    "LaneStatistics",
    "Message",
    "ModelT",
    "NoOwnerError",
    "ProducerError",
    "ProducerFencedError",
    "Record",
    "RecordMetadata",
    "RecordOptions",
    "RecoveryTimeoutError",
    "Router",
    "SameNode",
    "Schema",
    "Service",
    "ServiceT",
    "SessionSet",
    "SessionWindow",
    "SessionWrapper",
    "SetGlobalTable",
    "SetTable",
    "Settings",
    "Signal",
    "SlidingWindow",
    "StoreError",
    "Stream",
    "StreamT",
    "StreamtrioError",
    "Table",
    "TableError",
    "TableManager",
    "TableManagerStatistics",
    "TableNotFoundError",
    "TableT",
    "Topic",
    "TopicError",
    "TopicSpec",
    "TopicT",
    "TransactionError",
    "TransportError",
    "TumblingWindow",
    "UnknownEnvironmentSettingWarning",
    "ValidationError",
    "View",
    "Window",
    "WindowSet",
    "WindowWrapper",
    "Worker",
    "WorkerError",
    "WorkerInfo",
    "__version__",
    "current_event",
    "get_codec",
    "register_codec",
    "run",
    "serve",
    "uuid",
]
