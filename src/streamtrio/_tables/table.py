"""Table and GlobalTable: changelog-backed mappings.

A table is partitioned like the agents' source topics: a write made while an
agent processes an event from source partition N goes to table partition N,
and to partition N of the changelog topic. A write outside an event goes to
the partition the table's partitioner (the ``partitioner`` setting, murmur2
by default) picks for the encoded key, and the web router looks for a key
there too. A write from an event whose partition is not the key's own is
counted (sampled) and logged once per table: the key would be invisible to
the router (see "Where keys live" in ``docs/tables.md``).

Each table partition a worker owns is layered::

    dirty      writes since the last commit (reads see them at once)
    pending    writes handed to the changelog, not yet persisted (a commit in flight)
    store      the committed state (LMDB or memory), bytes

At a commit the manager (:mod:`._tables.manager`) seals ``dirty`` into
``pending``, produces the latest value of each key to the changelog, and once
every record is delivered writes ``pending`` and the changelog offsets it
reaches to the store in one atomic batch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import trio

from .._codecs import Codec, Schema
from .._exceptions import ClosedError, ConfigurationError, EncodeError, ProducerError, TableError
from .._partitioner import key_placement
from .._stream import _current_event, current_event
from .._topic import Topic
from .._types import TP, RecordMetadata
from .base import MAX_KEY_SIZE, StorePartition
from .timers import RESERVED

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from .._agent import Agent
    from .._app import App
    from .._stream import Event, Stream
    from .._types import Message
    from .._worker import Worker
    from .joins import TableHow, TableJoin
    from .manager import TableManager
    from .session import Sessions, SessionWrapper
    from .stream_join import WindowJoin
    from .timers import Clock, KeyTimer, TimerCallback, TimerService
    from .windowed import Emit, Windowing, WindowWrapper
    from .windows import Window

__all__ = ["GlobalTable", "Table"]

log = logging.getLogger(__name__)

RecoverCallback = Callable[[], Awaitable[None]]
ChangelogCallback = Callable[["Event[Any]"], Awaitable[None]]
#: Told of every write of a user key before it is made: ``(table, partition, key bytes, key,
#: new value or DELETED)`` (a table-table join's change stream).
ChangeListener = Callable[["Table", "TablePartition", bytes, Any, Any], None]
#: ``on_window_close(key, value)``, sync or async; key is ``(table key, (start, end))``.
WindowCloseCallback = Callable[[Any, Any], "Awaitable[None] | None"]


class _Deleted:
    def __repr__(self) -> str:
        return "<deleted>"


#: The value of a key deleted in a layer (a tombstone until it is persisted).
DELETED: Any = _Deleted()
_MISSING: Any = object()
#: Key types whose encoding cannot change while the key object lives.
_IMMUTABLE_KEYS = frozenset({str, bytes, int})
#: Value types the value codec encodes as they are (not None, not a Record).
_PLAIN_VALUES = frozenset({int, float, str, bytes, bool})
#: The partition of an event from a source partition no longer owned: its writes are dropped.
_LOST = -1
#: Writes from events whose placement is checked: every one of a table's
#: first ``_CHECK_ALL``, then one in ``_CHECK_EVERY`` (a power of two).
_CHECK_ALL = 1024
_CHECK_EVERY = 128


class Layer:
    """Writes of one table partition between two commits.

    ``data`` maps the encoded key to ``(key, value, encoded value)``; a deleted
    key has value :data:`DELETED` and encoded value ``None`` (a tombstone).
    ``outstanding`` counts changelog records not yet acknowledged; ``offset``
    is the highest changelog offset delivered for this layer.
    """

    __slots__ = ("data", "error", "offset", "outstanding")

    def __init__(self) -> None:
        self.data: dict[bytes, tuple[Any, Any, bytes | None]] = {}
        self.outstanding = 0
        self.offset = -1
        self.error: ProducerError | None = None

    def delivered(self, metadata: RecordMetadata | None, error: ProducerError | None) -> None:
        """The producer's delivery callback for this layer's changelog records."""
        self.outstanding -= 1
        if error is not None:
            if self.error is None:
                self.error = error
        elif metadata is not None and metadata.offset > self.offset:
            self.offset = metadata.offset

    def delivered_batch(self, count: int, offset: int, error: ProducerError | None) -> None:
        """The producer's report for a batch of this layer's records (one partition)."""
        self.outstanding -= count
        if error is not None and self.error is None:
            self.error = error
        if offset > self.offset:
            self.offset = offset


class TablePartition:
    """The in-memory state of one table partition on this worker.

    ``view`` is the store partition when this worker serves the partition
    (it owns it, or it is a GlobalTable); ``None`` for a partition it only
    wrote to from outside an event. ``foreign`` marks the writes outside
    events to a partition another worker owns, on their way to it through
    the table's writes topic (see :meth:`Table.writes_topic_name`).
    """

    __slots__ = ("dirty", "foreign", "number", "pending", "view")

    def __init__(self, number: int, view: StorePartition | None = None, *, foreign: bool = False) -> None:
        self.number = number
        self.view = view
        self.foreign = foreign
        self.dirty = Layer()
        self.pending: list[Layer] = []

    def overlay(self, kbytes: bytes) -> tuple[Any, Any, bytes | None] | None:
        entry = self.dirty.data.get(kbytes)
        if entry is None and self.pending:
            for layer in reversed(self.pending):
                entry = layer.data.get(kbytes)
                if entry is not None:
                    break
        return entry

    def merged_overlay(self) -> dict[bytes, tuple[Any, Any, bytes | None]]:
        merged: dict[bytes, tuple[Any, Any, bytes | None]] = {}
        for layer in self.pending:
            merged.update(layer.data)
        merged.update(self.dirty.data)
        return merged

    def unpersisted(self) -> int:
        return len(self.dirty.data) + sum(len(layer.data) for layer in self.pending)


_NAME = re.compile(r"[A-Za-z0-9._-]+")
#: The first key after every reserved one.
_RESERVED_END = RESERVED[:-1] + bytes([RESERVED[-1] + 1])


class Table(MutableMapping[Any, Any]):
    """A changelog-backed, partitioned key/value table (create with :meth:`App.Table`).

    Behaves as a ``MutableMapping``; ``table[key]`` of a missing key returns
    ``default()`` when a default factory is given (without storing it), so
    ``table[key] += 1`` works with ``default=int``. Values must be assigned
    again after an in-place change (``table[k] = table[k] + [x]``), as in Faust.

    Args:
        app: the app.
        name: the table name (letters, digits, ``.``, ``_``, ``-``).
        default: a factory for the value of a missing key (``int``, ``list``...).
        key_type: the key type (``None``, ``str``, ``int``, ``float``, ``bytes`` or a Record).
        value_type: the value type (the same choices).
        partitions: the changelog partition count (default: the ``topic_partitions``
            setting); it should equal the source topics' count.
        changelog_topic: a topic (or name) to use instead of ``<app id>-<name>-changelog``.
        store: a store URL for this table (default: the ``store`` setting).
        help: a description shown by ``streamtrio tables``.
        on_recover: ``async def f()`` called after each recovery.
        on_changelog_event: ``async def f(event)`` called for each changelog
            record replayed or followed (recovery, standbys, global tables).
        recovery_buffer_size: records applied to the store per batch during recovery.
        standby_buffer_size: accepted for Faust compatibility (standbys apply
            each fetched batch at once).
        extra_topic_configs: extra configs of the changelog topic.
        use_partitioner: write every key to the changelog partition its hash
            picks, instead of the partition of the event being processed.
        partitioner: how keys map to partitions (default: the changelog
            topic's, which is the app's ``partitioner`` setting unless given).
        key_serializer: codec for keys (default ``msgpack``).
        value_serializer: codec for values (default ``msgpack``).
        on_window_close: ``fn(key, value)`` (sync or async) called once per
            window of a windowed table when it closes, with ``key`` =
            ``(table key, (start, end))`` and its final value (``docs/windows.md``).

    Raises:
        ConfigurationError: a bad name, type, codec or partition count.
    """

    #: Whether every worker serves every partition (GlobalTable).
    is_global: bool = False

    def __init__(
        self,
        app: App,
        name: str,
        *,
        default: Callable[[], Any] | None = None,
        key_type: type | None = None,
        value_type: type | None = None,
        partitions: int | None = None,
        changelog_topic: Topic[Any] | str | None = None,
        store: str | None = None,
        help: str | None = None,
        on_recover: RecoverCallback | None = None,
        on_changelog_event: ChangelogCallback | None = None,
        recovery_buffer_size: int = 1000,
        standby_buffer_size: int | None = None,
        extra_topic_configs: Mapping[str, Any] | None = None,
        use_partitioner: bool = False,
        key_serializer: str | Codec | None = None,
        value_serializer: str | Codec = "msgpack",
        on_window_close: WindowCloseCallback | None = None,
        partitioner: str | None = None,
        manager: TableManager,
    ) -> None:
        key_serializer_given = key_serializer
        if key_serializer is None:
            key_serializer = "msgpack"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"table name {name!r}: use letters, digits, '.', '_' and '-' (it names the changelog topic)"
            )
        if default is not None and not callable(default):
            raise ConfigurationError(
                f"table {name!r}: default must be a callable such as int, got {default!r}"
            )
        if partitions is not None and partitions < 1:
            raise ConfigurationError(f"table {name!r}: partitions must be at least 1, got {partitions}")
        if recovery_buffer_size < 1:
            raise ConfigurationError(f"table {name!r}: recovery_buffer_size must be at least 1")
        if partitioner is not None:
            try:
                key_placement(partitioner)
            except ValueError as exc:
                raise ConfigurationError(f"table {name!r}: {exc}") from None
        self._partitioner = partitioner
        self.app = app
        self.name = name
        self.default = default
        self.key_type = key_type
        self.value_type = value_type
        self.help = help or ""
        self.store_url = store
        self.recovery_buffer_size = recovery_buffer_size
        self.standby_buffer_size = standby_buffer_size
        self.use_partitioner = use_partitioner or self.is_global
        self.schema = Schema(
            key_type=key_type,
            value_type=value_type,
            key_serializer=key_serializer,
            value_serializer=value_serializer,
        )
        #: the last key encoded and its bytes: ``table[key] += 1`` encodes it once
        #: (only for immutable key types, compared by identity)
        self._last_key: Any = _MISSING
        self._last_kbytes = b""
        #: the event whose partition was found last, and that partition:
        #: ``table[key] += 1`` finds it once (see _event_partition)
        self._last_event: Any = None
        self._last_lane: Any = None
        self._last_event_partition = 0
        # Keys are *stored* with key_serializer (msgpack by default, so a str key
        # comes back a str) but *partitioned* the way producers encode them: with
        # the table's explicit key_serializer, else the app's. Otherwise the
        # router would place a key on another partition than the source event
        # that wrote it.
        self._partition_schema = self.schema
        if partition_serializer := (key_serializer_given or app.conf.key_serializer):
            try:
                self._partition_schema = Schema(key_type=key_type, key_serializer=partition_serializer)
            except ConfigurationError:
                pass  # e.g. Record keys cannot be raw: partition by the stored form
        self._manager = manager
        self._recover_callbacks: list[RecoverCallback] = [on_recover] if on_recover is not None else []
        self._on_changelog_event = on_changelog_event
        if isinstance(changelog_topic, Topic):
            topic = changelog_topic
        else:
            topic_name = changelog_topic or f"{app.id}-{name}-changelog"
            topic = app.topic(
                topic_name,
                key_type=key_type,
                value_type=value_type,
                key_serializer=key_serializer,
                value_serializer=value_serializer,
                partitions=partitions,
                compacting=True,
                internal=True,
                config=extra_topic_configs,
                partitioner=partitioner,
            )
        self.changelog_topic = topic
        self.changelog_topic_name = topic.get_topic_name()
        #: the partition count; the changelog topic's real count once the worker started
        self.partitions: int = partitions or topic.partitions or app.conf.topic_partitions
        #: the partitions this worker holds in memory (served ones have a store view)
        self._parts: dict[int, TablePartition] = {}
        if on_window_close is not None and not callable(on_window_close):
            raise ConfigurationError(f"table {name!r}: on_window_close must be callable")
        self._on_window_close = on_window_close
        #: the windowed state, once ``tumbling``/``hopping``/``using_window`` was called
        self._windowing: Windowing | None = None
        #: the durable per-key timers, once ``on_timer`` was called
        self._timers: TimerService | None = None
        #: set when a timer service is created while the worker runs (a stream-stream join's)
        self._timers_created: trio.Event | None = None
        #: the session state, once ``session`` was called
        self._sessions: Sessions | None = None
        #: the stream-stream join this table buffers, once ``window_join`` used it
        self._join_buffer: WindowJoin | None = None
        #: told of each write of a user key (table-table join change streams)
        self._change_listeners: list[ChangeListener] = []
        #: writes from events, and those found on another partition than their key's (sampled)
        self.event_writes = 0
        self.misrouted_writes = 0
        self._misroute_logged = False
        #: writes outside events to keys of partitions another worker owns (sent to the owner)
        self.foreign_writes = 0
        #: those writes by partition, until they are delivered to the writes topic
        self._foreign: dict[int, TablePartition] = {}
        #: the topic carrying them to the owner, declared at worker start (plain tables only)
        self.writes_topic: Topic[Any] | None = None
        self._writes_agent: Agent[Any]

    # -- timers -------------------------------------------------------------------

    def on_timer(self, fun: TimerCallback) -> TimerCallback:
        """Decorator: call ``fun(timer)`` (sync or async) when a timer of this table fires.

        ``timer`` is a :class:`streamtrio.KeyTimer`; see ``docs/timers.md``.

        Raises:
            ConfigurationError: a GlobalTable (its partitions have no owner to fire them).
        """
        self._timer_service().callbacks.append(fun)
        return fun

    def _timer_service(self) -> TimerService:
        from .timers import TimerService

        if self.is_global:
            raise ConfigurationError(f"global table {self.name!r} cannot have timers; use app.Table")
        if self._timers is None:
            self._timers = TimerService(self)
            if self._timers_created is not None:
                self._timers_created.set()
        return self._timers

    async def _serve_timers(self, worker: Worker) -> None:
        """Run the timer service (the table manager starts this), once the table has one."""
        if self._timers is None:
            self._timers_created = trio.Event()
            await self._timers_created.wait()
        assert self._timers is not None
        await self._timers.serve(worker)

    def _require_timers(self) -> TimerService:
        if self._timers is None or not self._timers.callbacks:
            raise ConfigurationError(
                f"table {self.name!r} has no on_timer callback: decorate one with @table.on_timer"
            )
        self._check_running()
        return self._timers

    def schedule(
        self, key: Any, when: float | datetime, value: Any = None, *, clock: Clock = "event"
    ) -> None:
        """Schedule a durable timer for ``key`` at ``when`` (epoch seconds or datetime).

        With ``clock="event"`` it fires once the partition's stream time (the
        newest event timestamp that used this table there) reaches ``when``;
        with ``clock="wall"`` once the worker's clock does, with or without
        events. ``value`` (msgpack-serialisable) is handed to ``on_timer``.
        Scheduling the same ``(key, when, clock)`` again replaces its value.

        Raises:
            ConfigurationError: no ``on_timer`` callback, or a bad clock.
            ClosedError: the worker is not running.
        """
        self._require_timers().schedule(key, when, value, clock)

    def cancel_timer(self, key: Any, when: float | datetime, *, clock: Clock = "event") -> bool:
        """Delete a timer not fired yet; ``False`` if there was none."""
        return self._require_timers().cancel(key, when, clock)

    def timers(self, key: Any = None) -> list[KeyTimer]:
        """The timers not fired yet (of ``key``, or all) in the partitions this worker serves."""
        self._check_running()
        return [] if self._timers is None else self._timers.pending(key)

    def stream_time(self, partition: int) -> float | None:
        """The stream time of a served partition (epoch seconds), ``None`` before any event."""
        if self._timers is not None:
            return self._timers.stream_time(partition)
        if self._windowing is not None:
            return self._windowing.stream_time(partition)
        return None

    def _timer_partition(self, kbytes: bytes) -> tuple[int, TablePartition]:
        """Where a timer of ``kbytes`` lives: the event's partition, else the key's own."""
        n = self._event_partition()
        if n == _LOST:
            self._manager.discarded_writes += 1
            return n, TablePartition(_LOST)  # dropped: see _event_partition
        outside = n is None
        if n is None:
            n = self._home(kbytes)
        part = self._parts.get(n)
        if part is None:
            part = self._parts[n] = TablePartition(n)
        if outside and part.view is None and not self.is_global:
            self._note_foreign_write(n, kbytes)
        return n, part

    def _rolled_back(self) -> None:
        """The uncommitted writes were dropped: rebuild the in-memory indexes from the store."""
        if self._windowing is not None:
            self._windowing.reset()
        if self._timers is not None:
            self._timers.reset()
        if self._sessions is not None:
            self._sessions.reset()
        if self._join_buffer is not None:
            self._join_buffer.reset()

    # -- windows ------------------------------------------------------------------

    @property
    def window(self) -> Window | None:
        """The window of a windowed table, else ``None``."""
        return None if self._windowing is None else self._windowing.window

    def using_window(self, window: Window, *, key_index: bool = False, emit: Emit = "final") -> WindowWrapper:
        """Window this table with ``window``; returns the :class:`WindowWrapper` to use.

        ``emit="final"`` calls ``on_window_close`` once per window when it is
        final; ``emit="update"`` calls it (a plain function) after every update
        of a window, with its new value (``docs/windows.md``).

        Raises:
            ConfigurationError: a GlobalTable, the table already has another window, or a bad ``emit``.
        """
        from .windowed import Windowing, WindowWrapper, check_emit
        from .windows import Window as _Window

        if not isinstance(window, _Window):
            raise ConfigurationError(f"table {self.name!r}: using_window needs a Window, got {window!r}")
        if self.is_global:
            raise ConfigurationError(f"global table {self.name!r} cannot be windowed; use app.Table")
        if self._sessions is not None:
            raise ConfigurationError(f"table {self.name!r} has session windows; use one table per window")
        emit = check_emit(self, emit)
        if self._windowing is None:
            self._windowing = Windowing(self, window, emit)
        elif self._windowing.window is not window or self._windowing.emit != emit:
            raise ConfigurationError(
                f"table {self.name!r} is already windowed with {self._windowing.window!r}; "
                "use one table per window"
            )
        self._windowing.key_index |= key_index
        return WindowWrapper(self, key_index=key_index)

    def tumbling(
        self,
        size: float | timedelta | str,
        expires: float | timedelta | str | None = None,
        key_index: bool = False,
        *,
        grace: float | timedelta | str | None = None,
        emit: Emit = "final",
    ) -> WindowWrapper:
        """Tumbling windows ``[k*size, (k+1)*size)`` (see :class:`streamtrio.TumblingWindow`)."""
        from .windows import TumblingWindow

        return self.using_window(TumblingWindow(size, expires, grace), key_index=key_index, emit=emit)

    def hopping(
        self,
        size: float | timedelta | str,
        step: float | timedelta | str,
        expires: float | timedelta | str | None = None,
        key_index: bool = False,
        *,
        grace: float | timedelta | str | None = None,
        emit: Emit = "final",
    ) -> WindowWrapper:
        """Hopping windows ``[k*step, k*step + size)`` (see :class:`streamtrio.HoppingWindow`)."""
        from .windows import HoppingWindow

        return self.using_window(HoppingWindow(size, step, expires, grace), key_index=key_index, emit=emit)

    def session(
        self,
        gap: float | timedelta | str,
        expires: float | timedelta | str | None = None,
        *,
        grace: float | timedelta | str | None = None,
        emit: Emit = "final",
        merge: Callable[[Any, Any], Any] | None = None,
    ) -> SessionWrapper:
        """Session windows: per key, events closer than ``gap`` form one session.

        A session is final when stream time passes ``end + gap + grace``
        (``grace`` defaults to ``expires``): with ``emit="final"``
        ``on_window_close`` runs once then; with ``emit="update"`` it runs
        after every update instead. It is deleted at ``end + gap + expires``.
        On an idle partition stream time follows the clock, so sessions close
        on time. ``merge(a, b)`` combines the values of sessions a late event
        bridges (default ``+``). See ``docs/windows.md``.

        Raises:
            ConfigurationError: a GlobalTable, the table has another window, or a bad argument.
        """
        from .session import Sessions, SessionWindow, SessionWrapper, check_merge
        from .windowed import check_emit

        if self.is_global:
            raise ConfigurationError(f"global table {self.name!r} cannot be windowed; use app.Table")
        if self._windowing is not None:
            raise ConfigurationError(
                f"table {self.name!r} is already windowed with {self._windowing.window!r}; "
                "use one table per window"
            )
        if self._sessions is None:
            self._sessions = Sessions(
                self, SessionWindow(gap, expires, grace), check_merge(merge), check_emit(self, emit)
            )
        return SessionWrapper(self)

    def join(self, other: Table, *, how: TableHow = "inner") -> TableJoin:
        """The key-by-key join of this table and ``other`` (``docs/joins.md``).

        Returns a read-only mapping ``key -> (this value, other value)``, read
        from both tables at once; ``how`` is ``"inner"``, ``"left"`` or ``"outer"``.
        """
        from .joins import TableJoin

        return TableJoin(self, other, how)

    def left_join(self, other: Table) -> TableJoin:
        """``join(other, how="left")``."""
        return self.join(other, how="left")

    def outer_join(self, other: Table) -> TableJoin:
        """``join(other, how="outer")``."""
        return self.join(other, how="outer")

    async def on_window_close(self, key: Any, value: Any) -> None:
        """Called once per closed window; calls the table's ``on_window_close`` callback."""
        from .windowed import call_window_close

        await call_window_close(self._on_window_close, key, value)

    # -- description --------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"{type(self).__name__}: {self.name}"

    @property
    def shortlabel(self) -> str:
        return self.name

    def changelog_tp(self, partition: int) -> TP:
        """The changelog topic partition of a table partition."""
        return TP(self.changelog_topic_name, partition)

    def on_recover(self, fun: RecoverCallback) -> RecoverCallback:
        """Decorator: call ``async def fun()`` after each recovery of this table."""
        self._recover_callbacks.append(fun)
        return fun

    def served_partitions(self) -> list[int]:
        """The partitions this worker serves now (owned, or every one of a GlobalTable)."""
        return sorted(n for n, part in self._parts.items() if part.view is not None)

    def persisted_offset(self, tp: TP | int) -> int | None:
        """The last changelog offset persisted in the store for ``tp`` (or a partition number).

        Raises:
            ClosedError: the worker is not running.
        """
        if isinstance(tp, int):
            tp = self.changelog_tp(tp)
        return self._manager._store_for(self).persisted_offset(tp)

    def info(self) -> dict[str, Any]:
        """The table's attributes and, while a worker runs, its local state."""
        info: dict[str, Any] = {
            "name": self.name,
            "type": type(self).__name__,
            "changelog_topic": self.changelog_topic_name,
            "partitions": self.partitions,
            "key_type": getattr(self.key_type, "__name__", None),
            "value_type": getattr(self.value_type, "__name__", None),
            "default": getattr(self.default, "__name__", None),
            "use_partitioner": self.use_partitioner,
            "help": self.help,
        }
        if self._manager.running:
            store = self._manager._store_for(self)
            info["keys"] = {n: self._len_partition(self._parts[n]) for n in self.served_partitions()}
            info["persisted_offsets"] = {
                n: store.persisted_offset(self.changelog_tp(n)) for n in self.served_partitions()
            }
            info["unpersisted_writes"] = sum(part.unpersisted() for part in self._parts.values())
        if self._windowing is not None:
            info.update(self._windowing.info())
        if self._timers is not None:
            info.update(self._timers.info())
        if self._sessions is not None:
            info.update(self._sessions.info())
        return info

    def as_ansitable(
        self,
        title: str = "{table.name}",
        *,
        key: str = "key",
        value: str = "value",
        sort: bool = False,
        reverse: bool = False,
        target: Any = None,
    ) -> str:
        """Draw the table's items (those this worker serves) as a text table."""
        rows = [(repr(k) if not isinstance(k, str) else k, repr(v)) for k, v in self.items()]
        if sort:
            rows.sort(reverse=reverse)
        heading = title.format(table=self)
        w1 = max([len(key), *(len(r[0]) for r in rows)])
        w2 = max([len(value), *(len(r[1]) for r in rows)])
        width = w1 + w2 + 5
        heading = heading[: width - 2]
        lines = [
            "┌" + heading.center(width - 2, "─") + "┐",
            f"│ {key.ljust(w1)} │ {value.ljust(w2)} │",
            f"├{'─' * (w1 + 2)}┼{'─' * (w2 + 2)}┤",
        ]
        lines += [f"│ {k.ljust(w1)} │ {v.ljust(w2)} │" for k, v in rows]
        lines.append(f"└{'─' * (w1 + 2)}┴{'─' * (w2 + 2)}┘")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} changelog={self.changelog_topic_name!r}>"

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    # -- codecs ---------------------------------------------------------------------

    def _encode_key(self, key: Any) -> bytes:
        if key is self._last_key:
            return self._last_kbytes
        raw: bytes | None = None
        immutable = type(key) in _IMMUTABLE_KEYS
        if immutable:
            try:
                raw = self.schema._dump_key_plain(key)  # the codec itself; a failure: below
            except Exception:
                raw = None
        try:
            if raw is None:
                raw = self.schema.dumps_key(key) if key is not None else self.schema.key_codec.dumps(None)
        except Exception as exc:
            raise EncodeError(f"table {self.name!r}: cannot encode key {key!r:.80}: {exc}") from exc
        if raw is None or not 0 < len(raw) <= MAX_KEY_SIZE:
            size = 0 if raw is None else len(raw)
            raise EncodeError(
                f"table {self.name!r}: key {key!r:.80} encodes to {size} bytes; "
                f"a table key must be 1 to {MAX_KEY_SIZE} bytes"
            )
        if immutable:
            self._last_key = key
            self._last_kbytes = raw
        return raw

    def _encode_value(self, key: Any, value: Any) -> bytes:
        if type(value) in _PLAIN_VALUES:
            # The common case: the codec itself. A failure is encoded again
            # below, which raises the EncodeError naming the table, key and codec.
            try:
                return self.schema._dump_value_plain(value)
            except Exception:
                pass
        try:
            raw = self.schema.dumps_value(value) if value is not None else self.schema.value_codec.dumps(None)
        except Exception as exc:
            raise EncodeError(
                f"table {self.name!r}: cannot encode the value for key {key!r:.80}: {exc}"
            ) from exc
        assert raw is not None
        return raw

    def _decode_key(self, raw: bytes) -> Any:
        if self._windowing is not None:
            return self._windowing.decode_key(raw)
        if self._sessions is not None:
            return self._sessions.decode_key(raw)
        return self.schema.loads_key(raw, topic=self.changelog_topic_name)

    def _decode_value(self, raw: bytes) -> Any:
        return self.schema.loads_value(raw, topic=self.changelog_topic_name)

    # -- locating keys -------------------------------------------------------------------

    def _event_partition(self) -> int | None:
        """The source partition of the event being processed, if it is one this worker owns.

        ``_LOST`` when the event is from a source partition this worker no
        longer owns (revoked or lost while the event was in flight): its
        writes are discarded, since its offset is never committed here and
        the new owner processes it again.
        """
        found = self._event_part()
        if found is not None:
            return found.number
        event = _current_event.get()
        if event is None:
            return None
        lane = event._lane
        message = event.message
        if (message.topic, message.partition) not in self._manager.sources:
            if lane is not None and lane.revoked and lane.tp is not None:
                return _LOST  # GlobalTables and use_partitioner tables too
            return None
        if self.use_partitioner:
            return None
        n = message.partition
        if n >= self.partitions:
            raise TableError(
                f"table {self.name!r} has {self.partitions} partitions (changelog topic "
                f"{self.changelog_topic_name!r}) but the event being processed is from "
                f"{message.topic}[{n}]: give the table as many partitions as its source topics"
            )
        timers = self._timers
        if timers is not None and (part := self._parts.get(n)) is not None:
            timers.observe(n, part, event)
        self._last_event = event
        # A lane of one source partition stands for its events; not with timers,
        # which observe every event, nor for lanes of no single partition.
        self._last_lane = lane if timers is None and lane is not None and lane.tp is not None else None
        self._last_event_partition = n
        return n

    def _event_part(self) -> TablePartition | None:
        """The fast path of reads and writes in an agent: the partition of the event
        being processed when :meth:`_event_partition` found it for this event or its
        lane before (and the lane is not revoked since); ``None`` otherwise, for the
        full checks of :meth:`_event_partition`, :meth:`_find` and :meth:`_write_partition`."""
        event = _current_event.get()
        if event is None:
            return None
        lane = event._lane
        # Found before for this event, or for an event of the same lane (the same
        # source partition), on a partition then assigned. A revoke or a loss
        # revokes the event's lane before it changes the sources, so while the
        # lane is not revoked the answer stands.
        if (
            (event is self._last_event or (lane is not None and lane is self._last_lane))
            and (lane is None or not lane.revoked)
            and self._manager.running
        ):
            return self._parts.get(self._last_event_partition)
        return None

    def _check_running(self) -> None:
        if not self._manager.running:
            raise ClosedError(
                f"table {self.name!r} is not running: tables are used by a running worker "
                "(agents, timers, tasks, web views)"
            )

    def _find(self, kbytes: bytes) -> tuple[TablePartition | None, Any]:
        """Where ``kbytes`` lives and its value (``_MISSING`` if nowhere)."""
        self._check_running()
        n = self._event_partition()
        parts = self._parts
        if n == _LOST:
            return None, _MISSING
        if n is not None:
            part = parts.get(n)
            return part, (_MISSING if part is None else self._get_in(part, kbytes))
        home = self._home(kbytes)
        part = parts.get(home)
        if part is not None:
            value = self._get_in(part, kbytes)
            if value is not _MISSING:
                return part, value
        if not self.use_partitioner:
            for number, other in parts.items():
                if number != home and other.view is not None:
                    value = self._get_in(other, kbytes)
                    if value is not _MISSING:
                        return other, value
        return None, _MISSING

    def _get_in(self, part: TablePartition, kbytes: bytes) -> Any:
        entry = part.dirty.data.get(kbytes)
        if entry is None and part.pending:
            entry = part.overlay(kbytes)
        if entry is not None:
            value = entry[1]
            return _MISSING if value is DELETED else value
        view = part.view
        if view is None:
            return _MISSING
        raw = view.get(kbytes)
        return _MISSING if raw is None else self._decode_value(raw)

    def _write_partition(self, kbytes: bytes, key: Any = _MISSING) -> TablePartition:
        n = self._event_partition()
        if n == _LOST:
            self._manager.discarded_writes += 1
            return TablePartition(_LOST)  # written to, then dropped
        if n is not None and key is not _MISSING and self._windowing is None:
            self._check_placement(n, key=key)
        outside = n is None
        if n is None:
            found, value = self._find(kbytes)
            n = found.number if found is not None and value is not _MISSING else self._home(kbytes)
        part = self._parts.get(n)
        if outside and (part is None or part.view is None) and not self.is_global:
            if self.writes_topic is not None:
                return self._foreign_partition(n)
            self._note_foreign_write(n, kbytes)
        if part is None:
            part = self._parts[n] = TablePartition(n)
        return part

    def _foreign_partition(self, n: int) -> TablePartition:
        """Where a write outside an event to partition ``n``, owned elsewhere, waits to be sent."""
        self.foreign_writes += 1
        part = self._foreign.get(n)
        if part is None:
            part = self._foreign[n] = TablePartition(n, foreign=True)
        return part

    @property
    def writes_topic_name(self) -> str:
        """The topic that takes writes made outside events to the worker owning their key.

        ``<app id>-<table>-writes``, one partition per table partition. A
        worker that writes a key of a partition it does not serve (a timer, a
        task, a web view) sends the write there with the next commit; the
        owner applies it as its own write, as if an event had made it.
        """
        return f"{self.app.id}-{self.name}-writes"

    def _declare_writes_topic(self) -> None:
        """Declare the writes topic and the agent applying it, once (at worker start).

        Only plain tables: the writes of windows, sessions, join buffers and
        timers keep their own indexes, which a raw write would bypass.
        """
        if (
            self.is_global
            or self._windowing is not None
            or self._sessions is not None
            or self._join_buffer is not None
        ):
            return
        agents = self.app.agents
        if self.writes_topic is None:
            self.writes_topic = self.app.topic(
                self.writes_topic_name,
                key_serializer="raw",
                value_serializer="raw",
                partitions=self.partitions,
                internal=True,
            )
            register = self.app.agent(self.writes_topic, name=f"{self.name}.writes")
            self._writes_agent = register(self._apply_writes)
        elif agents.get(self._writes_agent.name) is not self._writes_agent:
            # the app's agents were replaced since (a test context selects its agents)
            agents[self._writes_agent.name] = self._writes_agent

    async def _apply_writes(self, stream: Stream[Any]) -> None:
        """The agent applying the writes another worker made outside events to our keys."""
        async for event in stream.events():
            self._apply_write(event.message)

    def _apply_write(self, message: Message) -> None:
        n = message.partition
        if (message.topic, n) not in self._manager.sources:
            self._manager.discarded_writes += 1
            return  # revoked or lost meanwhile: the next owner applies it
        kbytes, vbytes = message.key, message.value
        part = self._parts.get(n)
        if part is None or part.view is None or kbytes is None:
            why = "a record without a key" if kbytes is None else "its table partition is not served here"
            raise TableError(
                f"table {self.name!r}: cannot apply the write at "
                f"{message.topic}[{n}]@{message.offset} ({why})"
            )
        key = self.schema.loads_key(kbytes, topic=self.writes_topic_name)
        if vbytes is None:
            self._put(part, kbytes, key, DELETED, None)
        else:
            value = self.schema.loads_value(vbytes, topic=self.writes_topic_name)
            self._put(part, kbytes, key, value, vbytes)

    def _note_foreign_write(self, n: int, kbytes: bytes) -> None:
        """A write outside an event to a partition another worker owns that is not
        sent to it (windows, sessions, timers): count it, say so once.

        It reaches the changelog, but its owner does not apply it (owners do not
        read their own changelog back) and overwrites it with its next write.
        """
        self.foreign_writes += 1
        if self.foreign_writes > 1:
            return
        log.warning(
            "table %r: key %r was written outside an event (a timer, task or web view) on a worker "
            "that does not own its partition %d: the write goes to the changelog, but the owner "
            "does not apply it (windowed tables, sessions and timers have no writes topic) and "
            "its own next write of the key replaces it. Write where the partition is owned: send "
            "an event to the table's source topic, or route the web request to the owner "
            "(@app.table_route). Counted in /stats (tables.%s.foreign_writes); logged once per table.",
            self.name,
            self.schema.loads_key(kbytes, topic=self.changelog_topic_name),
            n,
            self.name,
        )

    def partition_for_key(self, key: Any) -> int:
        """The changelog partition a write of ``key`` made now goes to."""
        self._encode_key(key)  # the key must be storable
        n = self._event_partition()
        return n if n is not None and n != _LOST else self.key_partition(key)

    @property
    def partitioner(self) -> str:
        """How keys map to partitions: this table's ``partitioner``, else its changelog topic's."""
        return self._partitioner or self.changelog_topic.partitioner

    def _home(self, kbytes: bytes) -> int:
        """The owning partition of a stored (plain, unwindowed) key."""
        if self._partition_schema is self.schema:
            return key_placement(self.partitioner)(kbytes, self.partitions)
        return self.key_partition(self.schema.loads_key(kbytes, topic=self.changelog_topic_name))

    def key_partition(self, key: Any) -> int:
        """The partition that owns ``key``: where a producer with the table's partitioner puts it."""
        try:
            raw = self._partition_schema.dumps_key(key)
        except Exception:
            raw = None
        if raw is None:
            raw = self._encode_key(key)
        return key_placement(self.partitioner)(raw, self.partitions)

    def _check_placement(self, n: int, *, key: Any = _MISSING, kbytes: bytes = b"") -> None:
        """Count (sampled) and log once a write from event partition ``n`` of a key placed elsewhere.

        The key is given as itself, or stored (plain, unwindowed) as ``kbytes``.
        """
        self.event_writes = writes = self.event_writes + 1
        if writes > _CHECK_ALL and writes & (_CHECK_EVERY - 1):
            return
        home = self.key_partition(key) if key is not _MISSING else self._home(kbytes)
        if home == n:
            return
        self.misrouted_writes += 1
        if self._misroute_logged:
            return
        self._misroute_logged = True
        if key is _MISSING:
            key = self.schema.loads_key(kbytes, topic=self.changelog_topic_name)
        event = current_event()
        message = event.message if event is not None else None
        source = "?" if message is None else f"{message.topic}[{message.partition}]"
        log.warning(
            "table %r: key %r was written while processing an event from %s, but the %s "
            "partitioner places the key on partition %d, not %d: the web router sends "
            "requests for it to the worker of partition %d (a 404 there). Likely causes: the "
            "producer of %s uses another partitioner (librdkafka's default, used by "
            "confluent-kafka and kcat, is consistent_random: set partitioner= on the app or "
            "the topic), or the key is not the event's message key (message key: %r; re-key "
            "the stream with group_by first), or the table encodes keys otherwise than the "
            "topic (give it the topic's key_serializer). Such writes are counted in /stats "
            "(tables.%s.misrouted_writes); this is logged once per table.",
            self.name,
            key,
            source,
            self.partitioner,
            home,
            n,
            home,
            "?" if message is None else repr(message.topic),
            None if message is None else message.key,
            self.name,
        )

    def _put(self, part: TablePartition, kbytes: bytes, key: Any, value: Any, vbytes: bytes | None) -> None:
        if (
            self._change_listeners
            and part.number != _LOST
            and not part.foreign
            and not kbytes.startswith(RESERVED)
        ):
            for listener in self._change_listeners:
                listener(self, part, kbytes, key, value)
        layer = part.dirty
        layer.data[kbytes] = (key, value, vbytes)
        if self._manager.eager and part.number != _LOST:
            layer.outstanding += 1
            self._manager.producer.send_nowait(
                self.writes_topic_name if part.foreign else self.changelog_topic_name,
                kbytes,
                vbytes,
                partition=part.number,
                on_delivery=layer.delivered,
            )

    # -- the mapping ----------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        kbytes = self._encode_key(key)
        part = self._event_part()
        value = self._find(kbytes)[1] if part is None else self._get_in(part, kbytes)
        if value is _MISSING:
            if self.default is not None:
                return self.default()
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        kbytes = self._encode_key(key)
        vbytes = self._encode_value(key, value)
        part = self._event_part()
        if part is None:
            self._check_running()
            part = self._write_partition(kbytes, key)
        elif self._windowing is None:
            self._check_placement(part.number, key=key)
        self._put(part, kbytes, key, value, vbytes)

    def __delitem__(self, key: Any) -> None:
        kbytes = self._encode_key(key)
        part, value = self._find(kbytes)
        if part is None or value is _MISSING:
            # Outside an event, a key another worker owns cannot be seen here:
            # the delete is sent to the owner (a no-op there if the key is absent).
            part = self._foreign_target(kbytes)
            if part is None:
                raise KeyError(key)
        self._put(part, kbytes, key, DELETED, None)

    def _foreign_target(self, kbytes: bytes) -> TablePartition | None:
        """The foreign partition a write of ``kbytes`` made now is sent to, if it is one."""
        n = self._served_elsewhere(kbytes)
        return None if n is None else self._foreign_partition(n)

    def _served_elsewhere(self, kbytes: bytes) -> int | None:
        """The partition of ``kbytes``, when a write made now goes to another worker
        through the writes topic (outside an event, a partition not served here)."""
        if self.writes_topic is None or self._event_partition() is not None:
            return None
        n = self._home(kbytes)
        part = self._parts.get(n)
        if part is not None and part.view is not None:
            return None
        return n

    def _unseen_error(self, call: str, key: Any, n: int, instead: str) -> TableError:
        return TableError(
            f"table {self.name!r}: {call} of key {key!r:.80} outside an event, on a worker that "
            f"does not serve its partition {n}: the value is on the worker that does, and cannot "
            f"be seen here; {instead}"
        )

    def __contains__(self, key: object) -> bool:
        try:
            kbytes = self._encode_key(key)
        except EncodeError:
            return False
        return self._find(kbytes)[1] is not _MISSING

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` (the default factory is not used)."""
        _, value = self._find(self._encode_key(key))
        return default if value is _MISSING else value

    def pop(self, key: Any, *default: Any) -> Any:
        """Remove ``key`` and return its value (or ``default``).

        Raises:
            KeyError: ``key`` is not in the table and no default is given.
            TableError: called outside an event for a key of a partition
                another worker serves (its value cannot be read here; ``del``
                sends the delete to that worker).
        """
        kbytes = self._encode_key(key)
        part, value = self._find(kbytes)
        if part is None or value is _MISSING:
            n = self._served_elsewhere(kbytes)
            if n is not None:
                raise self._unseen_error(
                    "pop()", key, n, "use `del table[key]` to delete it there, or pop it where it is served"
                )
            if default:
                return default[0]
            raise KeyError(key)
        self._put(part, kbytes, key, DELETED, None)
        return value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``; if missing, set it to ``default`` and return that.

        Raises:
            TableError: called outside an event for a key of a partition
                another worker serves: whether the key is missing cannot be
                told here, and setting it could overwrite the value there.
        """
        kbytes = self._encode_key(key)
        _, value = self._find(kbytes)
        if value is _MISSING:
            n = self._served_elsewhere(kbytes)
            if n is not None:
                raise self._unseen_error(
                    "setdefault()", key, n, "setting it could overwrite that value; call it where served"
                )
            self[key] = default
            return default
        return value

    def clear(self) -> None:
        """Delete every key this worker serves (each delete reaches the changelog)."""
        for key in list(self.keys()):
            del self[key]

    def _iter_partition(self, part: TablePartition) -> Iterator[tuple[Any, Any]]:
        overlay = part.merged_overlay()
        # Windowed tables and timers keep their own state under reserved keys.
        hide = self._hides_reserved()
        for kbytes, (key, value, _raw) in overlay.items():
            if value is not DELETED and not (hide and kbytes.startswith(RESERVED)):
                yield key, value
        if part.view is not None:
            decode_key, decode_value = self._decode_key, self._decode_value
            for kbytes, raw in part.view.items():
                if kbytes not in overlay and not (hide and kbytes.startswith(RESERVED)):
                    yield decode_key(kbytes), decode_value(raw)

    def _hides_reserved(self) -> bool:
        return self._windowing is not None or self._timers is not None

    def _len_partition(self, part: TablePartition) -> int:
        view = part.view
        count = len(view) if view is not None else 0
        overlay = part.merged_overlay()
        hide = self._hides_reserved()
        if hide:
            if view is not None:
                count -= sum(1 for _ in view.range(RESERVED, _RESERVED_END))
            wanted = [k for k in overlay if not k.startswith(RESERVED)]
        else:
            wanted = list(overlay)
        # One read transaction for every key the overlay touches, not one per key.
        stored_keys = view.get_many(wanted).keys() if view is not None and wanted else set()
        for kbytes in wanted:
            stored = kbytes in stored_keys
            if overlay[kbytes][1] is DELETED:
                count -= stored
            else:
                count += not stored
        return count

    def _served(self) -> list[TablePartition]:
        self._check_running()
        return [self._parts[n] for n in self.served_partitions()]

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        """Every (key, value) of the partitions this worker serves."""
        for part in self._served():
            yield from self._iter_partition(part)

    async def scan(self, *, chunk: int = 1000) -> AsyncIterator[tuple[Any, Any]]:
        """Every (key, value) of the partitions this worker serves, like :meth:`items`,
        read ``chunk`` keys at a time on the store's thread.

        ``items()``, ``keys()``, ``values()`` and iteration are synchronous and
        read the store on the calling thread: in a worker (a web view, a timer)
        a large table's full scan blocks every partition meanwhile. ``async for
        key, value in table.scan()`` lets them run between chunks. Like
        ``items()`` it does not pin a snapshot: a commit made while scanning may
        or may not be seen by the keys not reached yet; each key is seen once.

        Raises:
            ClosedError: the worker is not running.
            ValueError: ``chunk`` is below 1.
        """
        if chunk < 1:
            raise ValueError(f"table {self.name!r}: scan(chunk={chunk}) must read at least 1 key")
        hide = self._hides_reserved()
        for part in self._served():
            overlay = part.merged_overlay()
            for kbytes, (key, value, _raw) in overlay.items():
                if value is not DELETED and not (hide and kbytes.startswith(RESERVED)):
                    yield key, value
            view = part.view
            if view is None:
                continue
            after: bytes | None = None
            while True:
                rows = await view.store.run(view.chunk, after, chunk)
                for kbytes, raw in rows:
                    if kbytes not in overlay and not (hide and kbytes.startswith(RESERVED)):
                        yield self._decode_key(kbytes), self._decode_value(raw)
                if len(rows) < chunk:
                    break
                after = rows[-1][0]

    def keys(self) -> Iterator[Any]:  # type: ignore[override]
        return (key for key, _ in self.items())

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        return (value for _, value in self.items())

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __len__(self) -> int:
        return sum(self._len_partition(part) for part in self._served())


class GlobalTable(Table):
    """A table every worker holds in full (create with :meth:`App.GlobalTable`).

    Every worker replays every partition of the changelog before it reports
    ready, then follows it. A key always lives in the partition its hash picks;
    a write is visible on the writing worker at once and on the others once
    they read it from the changelog.
    """

    is_global = True
