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
from ._records import FieldDescriptor, Record
from ._run import run, serve
from ._settings import Settings
from ._stream import Event, Stream, current_event
from ._tables.manager import TableManager, TableManagerStatistics
from ._tables.table import GlobalTable, Table
from ._tables.windowed import WindowSet, WindowWrapper
from ._tables.windows import HoppingWindow, SlidingWindow, TumblingWindow, Window
from ._topic import Channel, FutureMessage, Topic
from ._types import TP, Message, RecordMetadata, TopicSpec
from ._version import __version__
from ._web.router import NoOwnerError, Router, SameNode, TableNotFoundError
from ._web.routes import View
from ._worker import Worker

__all__ = [
    "TP",
    "Agent",
    "AgentError",
    "App",
    "AppLoadError",
    "AskTimeoutError",
    "BrokerUnavailableError",
    "Channel",
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
    "FieldDescriptor",
    "FutureMessage",
    "GlobalTable",
    "HoppingWindow",
    "LaneStatistics",
    "Message",
    "NoOwnerError",
    "ProducerError",
    "ProducerFencedError",
    "Record",
    "RecordMetadata",
    "RecoveryTimeoutError",
    "Router",
    "SameNode",
    "Schema",
    "Settings",
    "SlidingWindow",
    "StoreError",
    "Stream",
    "StreamtrioError",
    "Table",
    "TableError",
    "TableManager",
    "TableManagerStatistics",
    "TableNotFoundError",
    "Topic",
    "TopicError",
    "TopicSpec",
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
]
