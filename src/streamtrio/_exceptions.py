"""The streamtrio exception tree.

Every error streamtrio raises on purpose derives from :class:`StreamtrioError`.
Errors from confluent-kafka and LMDB are mapped to these at the boundary and
raised ``from`` the original, so the cause is never lost::

    StreamtrioError
    ├── ConfigurationError          a setting is unknown, mistyped or out of range
    ├── AppLoadError                 ``streamtrio run PATH:APP`` could not find the app
    ├── CodecError
    │   ├── EncodeError              a key or value cannot be serialized
    │   └── DecodeError              a fetched key or value cannot be deserialized
    ├── ValidationError              a Record field has the wrong type or is missing
    ├── ClosedError                  a producer, consumer or store was used after close
    ├── TransportError
    │   ├── BrokerUnavailableError   the broker cannot be reached in time
    │   ├── ProducerError            a message could not be delivered
    │   │   ├── ProducerFencedError  another instance took over our transactional id
    │   │   └── DeadLetterError      a message could not be sent to its dead-letter topic
    │   ├── CommitError              an offset commit failed
    │   ├── TopicError               a topic cannot be declared or is misconfigured
    │   └── TransactionError         a transaction could not be committed (it is aborted)
    ├── TableError
    │   ├── StoreError               the state store failed
    │   └── RecoveryTimeoutError     changelog replay of a partition stalled
    ├── AgentError                   an agent crashed (wraps the original exception)
    ├── AskTimeoutError              an agent did not reply to ``ask`` in time
    └── WorkerError                  the worker could not start or stopped on error
"""

from __future__ import annotations

from typing import NoReturn

__all__ = [
    "AgentError",
    "AppLoadError",
    "AskTimeoutError",
    "BrokerUnavailableError",
    "ClosedError",
    "CodecError",
    "CommitError",
    "ConfigurationError",
    "DeadLetterError",
    "DecodeError",
    "EncodeError",
    "ProducerError",
    "ProducerFencedError",
    "RecoveryTimeoutError",
    "StoreError",
    "StreamtrioError",
    "TableError",
    "TopicError",
    "TransactionError",
    "TransportError",
    "ValidationError",
    "WorkerError",
]


class StreamtrioError(Exception):
    """Base class of every error streamtrio raises on purpose."""


class ConfigurationError(StreamtrioError, ValueError):
    """A setting is unknown, has the wrong type, or a bad value.

    The message names the setting and where the value came from.
    """


class AppLoadError(StreamtrioError):
    """The app named on the command line could not be imported or found."""


class CodecError(StreamtrioError):
    """A key or value could not be serialized or deserialized."""


class EncodeError(CodecError, TypeError):
    """A key or value cannot be serialized with the configured codec."""


class DecodeError(CodecError, ValueError):
    """A fetched key or value cannot be deserialized.

    Attributes:
        topic: the topic the message came from (``None`` outside a topic).
        partition: its partition.
        offset: its offset.
        field: ``"key"`` or ``"value"``.
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        field: str = "value",
    ) -> None:
        self.reason = message
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.field = field
        if topic is not None:
            message = (
                f"cannot decode {field} of message at topic={topic!r} "
                f"partition={partition} offset={offset}: {message}"
            )
        super().__init__(message)

    def with_policy_hint(self) -> DecodeError:
        """This error, its message saying which setting moves a worker past such messages."""
        hint = (
            '; set value_decode_error="skip" (log and count such messages) or "dead_letter" '
            "(move them to the dead-letter topic) to go on past them"
        )
        text = str(self)
        if not text.endswith(hint):
            self.args = (text + hint,)
        return self


class ValidationError(StreamtrioError, ValueError):
    """A Record was built with a missing field or a value of the wrong type."""


class ClosedError(StreamtrioError, RuntimeError):
    """A producer, consumer, store or channel was used after it was closed."""


class TransportError(StreamtrioError):
    """The message transport (Kafka or memory) failed."""


class BrokerUnavailableError(TransportError):
    """The broker could not be reached within the configured time."""


#: What to change when a message is too large, added to the error that says so.
_TOO_LARGE_HINT = (
    " (the limit is the producer's and the broker's message.max.bytes and the topic's "
    "max.message.bytes: raise the producer's with producer_config={'message.max.bytes': N}, "
    "the topic's with app.topic(..., config={'max.message.bytes': N}), or send smaller messages)"
)


class ProducerError(TransportError):
    """A message could not be delivered.

    A message refused for its size (``MSG_SIZE_TOO_LARGE``, from librdkafka or
    the memory broker) says which settings raise the limit.
    """

    def __init__(self, *args: object) -> None:
        text = args[0] if args and isinstance(args[0], str) else ""
        if "MSG_SIZE_TOO_LARGE" in text and _TOO_LARGE_HINT not in text:
            args = (text + _TOO_LARGE_HINT, *args[1:])
        super().__init__(*args)


class DeadLetterError(ProducerError):
    """A message could not be delivered to its dead-letter topic (the worker stops)."""


class CommitError(TransportError):
    """An offset commit was refused or failed.

    Attributes:
        retriable: the same commit may succeed if tried again (the group
            coordinator moved or is loading, a rebalance is in progress, the
            broker did not answer in time); the commit loop retries those.
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class TopicError(TransportError):
    """A topic could not be declared, or its layout does not fit the app."""


class ProducerFencedError(ProducerError):
    """Another producer with the same transactional id has fenced this one.

    The fenced producer can neither send nor commit: nothing it has not
    committed yet ever becomes visible. The worker holding it stops.
    """


class TransactionError(TransportError):
    """A transaction could not be committed and was (or must be) aborted.

    Nothing the transaction holds becomes visible to ``read_committed``
    readers and its source offsets are not committed: the events are
    processed again from the last committed offsets.

    Attributes:
        abortable: whether the transaction can be aborted and the producer
            reused (``False``: the producer is unusable and must be closed).
    """

    def __init__(self, message: str, *, abortable: bool = True) -> None:
        super().__init__(message)
        self.abortable = abortable


class TableError(StreamtrioError):
    """A table or its state store failed."""


class StoreError(TableError):
    """The state store (LMDB or memory) failed."""


class RecoveryTimeoutError(TableError):
    """Replaying a changelog partition made no progress within the timeout."""


class AgentError(StreamtrioError):
    """An agent raised; the original exception is the ``__cause__``."""


class AskTimeoutError(StreamtrioError, TimeoutError):
    """An agent did not reply to ``ask`` within the timeout (the message names the agent)."""


class WorkerError(StreamtrioError):
    """The worker could not start, or stopped because of an error."""


def reraise_unwrapped(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the only exception inside ``group`` (nested single groups too), else ``group``.

    The transport's context managers run a nursery around ``yield``; trio
    wraps whatever leaves it in an exception group. A lone error is raised
    bare so callers can catch ``BrokerUnavailableError`` (or their own error
    from the ``async with`` body) as usual; its own context is kept.
    """
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    if leaf is group:
        raise group
    context = leaf.__context__
    try:
        raise leaf
    finally:
        leaf.__context__ = context
