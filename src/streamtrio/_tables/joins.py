"""Stream-table joins: ``stream.join(table)`` and ``stream.left_join(table)``.

Each event is enriched with the current value of a Table or GlobalTable for a
key taken from the event (its key, a Record field, or ``f(value)``): Kafka
Streams' ``KStream#join(KTable)`` / ``leftJoin``. The lookup reads the table
as the agent would (dirty writes included), in the event's partition for a
Table, anywhere for a GlobalTable.

A Table must be co-partitioned with the stream: as many partitions as every
topic the joined events come from, and the lookup key must hash to the
event's partition. The partition counts are checked when the join starts (and
for each new source topic, e.g. a ``group_by`` repartition topic); the key
placement is checked per event. Both fail loudly with a ``ConfigurationError``
naming the topic, the table and the fix, since a join of tables that are not
co-partitioned silently misses matches. A GlobalTable needs no check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .._exceptions import ConfigurationError, EncodeError, TableError
from .._records import FieldDescriptor
from .._stream import current_event
from .._topic import Topic

if TYPE_CHECKING:
    from .._stream import Event, Stream
    from .table import Table, TablePartition

__all__ = ["JoinKey", "TableJoin", "join_table"]

T = TypeVar("T")

#: Where the lookup key comes from: the event's key (``None``), a Record field, or ``f(value)``.
JoinKey = FieldDescriptor | Callable[[Any], Any] | None
How = Literal["inner", "left"]


def _key_getter(key: JoinKey) -> Callable[[Event[Any]], Any]:
    if key is None:
        return lambda event: event.key
    if isinstance(key, FieldDescriptor):
        descriptor = key
        return lambda event: descriptor.getattr(event.value)
    if callable(key):
        fun = key
        return lambda event: fun(event.value)
    raise ConfigurationError(f"join key: expected None, a Record field or a callable, got {key!r}")


async def _check_counts(table: Table, topics: list[str]) -> None:
    """Refuse a Table whose partition count differs from a source topic's."""
    worker = table._manager._worker
    if worker is None or not topics:
        return
    counts = await worker.transport.partition_counts(topics)
    for name in topics:
        count = counts.get(name)
        if count is not None and count != table.partitions:
            raise ConfigurationError(
                f"stream-table join: topic {name!r} has {count} partitions but table "
                f"{table.name!r} has {table.partitions} (changelog {table.changelog_topic_name!r}): "
                "they are not co-partitioned, so lookups would miss. Give them the same partition "
                "count, or join a GlobalTable"
            )


async def join_table(
    stream: Stream[T], table: Table, *, key: JoinKey = None, how: How = "inner"
) -> AsyncIterator[tuple[T, Any]]:
    """Yield ``(value, table value)`` for each event of ``stream`` (see the module docstring).

    ``how="inner"`` skips (and acks) events whose key is not in the table;
    ``how="left"`` yields ``(value, None)`` for them.

    Raises:
        ConfigurationError: a bad argument, or a Table not co-partitioned with the stream.
    """
    from .table import Table as _Table

    if not isinstance(table, _Table):
        raise ConfigurationError(f"stream-table join: expected a Table or GlobalTable, got {table!r}")
    if how not in ("inner", "left"):
        raise ConfigurationError(f"stream-table join: how must be 'inner' or 'left', got {how!r}")
    get_key = _key_getter(key)
    left = how == "left"
    partitioned = not table.is_global
    checked: set[str] = set()
    if partitioned:
        agent = stream._agent
        channel = agent.channel if agent is not None else None
        if isinstance(channel, Topic) and channel.topics:
            await _check_counts(table, list(channel.topics))
            checked.update(channel.topics)
    lookup = table.get
    async for event in stream.events():
        join_key = get_key(event)
        if partitioned:
            message = event.message
            if message.topic not in checked:
                await _check_counts(table, [message.topic])
                checked.add(message.topic)
            if join_key is not None and table.key_partition(join_key) != message.partition:
                raise ConfigurationError(
                    f"stream-table join with table {table.name!r}: the join key {join_key!r:.80} "
                    f"belongs to partition {table.key_partition(join_key)} but the event is from "
                    f"{message.topic}[{message.partition}]: the stream is not partitioned by the join "
                    "key (group_by it first), its producer does not use Kafka's murmur2 partitioner, "
                    "or join a GlobalTable"
                )
        found = None if join_key is None else lookup(join_key)
        if found is None and not left:
            continue
        yield event.value, found


TableHow = Literal["inner", "left", "outer"]
#: ``joiner(left value, right value)``: the value of a joined row in a change stream.
Joiner = Callable[[Any, Any], Any]


def _pair(left: Any, right: Any) -> Any:
    return [left, right]


class TableJoin(Mapping[Any, tuple[Any, Any]]):
    """The join of two tables, key by key: ``left.join(right)`` (``docs/joins.md``).

    A read-only mapping whose value for ``key`` is ``(left[key], right[key])``,
    computed from both tables when it is read, so it reflects every change of
    either side at once (there is no separate state to keep in step):

    * ``how="inner"``: keys in both tables;
    * ``how="left"``: keys of the left table, ``None`` for a missing right value;
    * ``how="outer"``: keys of either, ``None`` for the missing side.

    Both tables must be co-partitioned unless one is a GlobalTable: the same
    partition count (checked at every read while a worker runs, since the
    changelogs' real counts are known only then).

    :meth:`changes_to` adds a change stream: every write of either table
    produces the key's new joined row (or a tombstone) to a topic.
    """

    def __init__(self, left: Table, right: Table, how: TableHow = "inner") -> None:
        from .table import Table as _Table

        if not isinstance(right, _Table):
            raise ConfigurationError(f"table join: expected a Table or GlobalTable, got {right!r}")
        if how not in ("inner", "left", "outer"):
            raise ConfigurationError(f"table join: how must be 'inner', 'left' or 'outer', got {how!r}")
        for table in (left, right):
            if table._windowing is not None or table._sessions is not None:
                raise ConfigurationError(f"table join: {table.name!r} is windowed; join plain tables")
        self.left = left
        self.right = right
        self.how = how
        self._target: Topic[Any] | None = None
        self._joiner: Joiner = _pair

    def changes_to(self, topic: Topic[Any], *, joiner: Joiner | None = None) -> TableJoin:
        """Produce this join's change stream to ``topic`` (Kafka Streams' ``KTable#join(...).toStream()``).

        Every write of a key in either table (set, delete, pop) produces, as
        an output of the event being processed, ``key -> joiner(left, right)``
        when the key has a joined row after the write (``[left, right]`` by
        default, ``None`` for a missing side of a left or outer join), or
        ``key -> None`` (a tombstone) when the write took its row out of the
        join; nothing when it had none before either. See ``docs/joins.md``.

        Returns:
            this join.

        Raises:
            ConfigurationError: not a Topic, a GlobalTable side, a self-join, or a
                change stream already set.
        """
        if not isinstance(topic, Topic):
            raise ConfigurationError(
                f"table join change stream: expected a Topic (app.topic(...)), got {topic!r}"
            )
        left, right = self.left, self.right
        if left.is_global or right.is_global:
            raise ConfigurationError(
                f"table join change stream of {left.name!r} and {right.name!r}: both tables must be "
                "partitioned (a GlobalTable is written on every worker, so the other side's value is "
                "not at hand where it changes)"
            )
        if left is right:
            raise ConfigurationError(f"table join change stream: {left.name!r} joined with itself")
        if self._target is not None:
            raise ConfigurationError(f"{self!r} already produces its changes to {self._target!r}")
        if joiner is not None and not callable(joiner):
            raise ConfigurationError(f"table join joiner must be callable, got {joiner!r}")
        self._target = topic
        self._joiner = joiner or _pair
        left._change_listeners.append(self._changed)
        right._change_listeners.append(self._changed)
        return self

    def _row(self, left: Any, right: Any) -> tuple[Any, Any] | None:
        """The joined row of a key whose sides are ``left`` and ``right`` (``_MISSING`` if absent)."""
        from .table import _MISSING

        has_left, has_right = left is not _MISSING, right is not _MISSING
        how = self.how
        if (how == "inner" and not (has_left and has_right)) or (how == "left" and not has_left):
            return None
        if not (has_left or has_right):
            return None
        return (left if has_left else None), (right if has_right else None)

    def _changed(self, table: Table, part: TablePartition, kbytes: bytes, key: Any, value: Any) -> None:
        """A write of ``key`` in either table, before it is made: produce the new row or a tombstone."""
        from .table import _MISSING, DELETED

        self._check()
        other = self.right if table is self.left else self.left
        opart = other._parts.get(part.number)
        if part.view is None or opart is None or opart.view is None:
            raise TableError(
                f"{self!r}: key {key!r:.80} was written to {table.name!r} partition {part.number}, which "
                f"this worker does not serve: its {other.name!r} value is not here, so the change stream "
                "cannot say what the joined row became. Write joined tables from the agents that own "
                "the key's partition (not from web views or another partition's events)"
            )
        old = table._get_in(part, kbytes)
        new = _MISSING if value is DELETED else value
        theirs = other._get_in(opart, other._encode_key(key))
        if table is self.left:
            before, after = self._row(old, theirs), self._row(new, theirs)
        else:
            before, after = self._row(theirs, old), self._row(theirs, new)
        if after is None and before is None:
            return
        out = None if after is None else self._joiner(*after)
        event = current_event()
        timestamp = None if event is None else event.message.timestamp
        assert self._target is not None
        self._target.send_soon(key=key, value=out, timestamp=timestamp)

    def _check(self) -> None:
        left, right = self.left, self.right
        if not left.is_global and not right.is_global and left.partitions != right.partitions:
            raise ConfigurationError(
                f"table join: {left.name!r} has {left.partitions} partitions and {right.name!r} "
                f"{right.partitions}: they are not co-partitioned, so a worker holds a key's left "
                "value without its right one. Give them the same partition count, or make one a "
                "GlobalTable"
            )

    @staticmethod
    def _lookup(table: Table, key: Any) -> Any:
        from .table import _MISSING

        try:
            kbytes = table._encode_key(key)
        except EncodeError:
            return _MISSING
        return table._find(kbytes)[1]

    def __getitem__(self, key: Any) -> tuple[Any, Any]:
        from .table import _MISSING

        self._check()
        left = self._lookup(self.left, key)
        right = self._lookup(self.right, key)
        how = self.how
        if left is _MISSING and (how != "outer" or right is _MISSING):
            raise KeyError(key)
        if right is _MISSING and how == "inner":
            raise KeyError(key)
        return (None if left is _MISSING else left), (None if right is _MISSING else right)

    def __iter__(self) -> Iterator[Any]:
        self._check()
        left_keys = list(self.left.keys())
        if self.how == "inner":
            yield from (key for key in left_keys if key in self.right)
            return
        yield from left_keys
        if self.how == "outer":
            yield from (key for key in self.right.keys() if key not in self.left)  # noqa: SIM118

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<TableJoin {self.how} {self.left.name!r} x {self.right.name!r}>"
