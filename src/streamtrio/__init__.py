"""streamtrio: stream processing for Kafka on trio.

Faust's programming model (apps, agents, topics, channels, tables) on trio's
structured concurrency, with confluent-kafka as the Kafka client.
"""

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
from ._settings import FaustCompatibilityWarning, Settings
from ._signals import Signal
from ._stream import Event, Stream, current_event
from ._tables.manager import TableManager, TableManagerStatistics
from ._tables.session import SessionSet, SessionWindow, SessionWrapper
from ._tables.table import GlobalTable, Table
from ._tables.timers import KeyTimer
from ._tables.windowed import WindowSet, WindowWrapper
from ._tables.windows import HoppingWindow, SlidingWindow, TumblingWindow, Window
from ._topic import Channel, FutureMessage, Topic
from ._types import TP, Message, RecordMetadata, TopicSpec
from ._version import __version__
from ._web.router import NoOwnerError, Router, SameNode, TableNotFoundError
from ._web.routes import View
from ._worker import Worker


def uuid() -> str:
    """A new random UUID as a string (Faust's ``faust.uuid()``)."""
    import uuid as _uuid

    return str(_uuid.uuid4())


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
