"""SetTable and SetGlobalTable: tables whose values are sets (Faust's ``app.SetTable``).

``table[key]`` is a :class:`ChangeloggedSet`: a mutable set that writes
itself back to its table on every change, so ``table[k].add(x)``,
``table[k].discard(x)`` and ``table[k] |= {x, y}`` reach the changelog like an
assignment would. The changelog holds the whole set of a key (as a list): the
latest value wins, recovery replays it like any other table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSet
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError
from .._records import Record, revive
from .table import _MISSING, GlobalTable, Table

if TYPE_CHECKING:
    from .._app import App
    from .._stream import Stream
    from .._topic import Topic
    from .manager import TableManager

__all__ = ["ChangeloggedSet", "SetGlobalTable", "SetTable", "SetTableManager"]


class ChangeloggedSet(MutableSet[Any]):
    """The set stored under one key of a :class:`SetTable`.

    Every change is written back to the table (``table[key] = <the new set>``),
    in the partition of the event being processed, exactly like an assignment.
    Compares equal to a plain ``set`` with the same members.
    """

    __slots__ = ("_key", "_members", "_table")

    def __init__(self, table: Table, key: Any, members: Iterable[Any] = ()) -> None:
        self._table = table
        self._key = key
        self._members: set[Any] = set(members)

    def _changed(self) -> None:
        self._table[self._key] = self._members

    # -- the MutableSet protocol -------------------------------------------------------

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def __iter__(self) -> Iterator[Any]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: Any) -> None:
        """Add ``member`` (written back only if it was missing)."""
        if member not in self._members:
            self._members.add(member)
            self._changed()

    def discard(self, member: Any) -> None:
        """Remove ``member`` if present (written back only if it was there)."""
        if member in self._members:
            self._members.discard(member)
            self._changed()

    # -- bulk updates: one write each ---------------------------------------------------

    def update(self, *others: Iterable[Any]) -> None:
        before = len(self._members)
        for other in others:
            self._members.update(other)
        if len(self._members) != before:
            self._changed()

    def difference_update(self, *others: Iterable[Any]) -> None:
        before = len(self._members)
        for other in others:
            self._members.difference_update(other)
        if len(self._members) != before:
            self._changed()

    def intersection_update(self, *others: Iterable[Any]) -> None:
        before = len(self._members)
        self._members.intersection_update(*others)
        if len(self._members) != before:
            self._changed()

    def symmetric_difference_update(self, other: Iterable[Any]) -> None:
        before = set(self._members)
        self._members.symmetric_difference_update(other)
        if self._members != before:
            self._changed()

    def clear(self) -> None:
        if self._members:
            self._members.clear()
            self._changed()

    def __ior__(self, other: Iterable[Any]) -> ChangeloggedSet:  # type: ignore[misc]
        self.update(other)
        return self

    def __isub__(self, other: Iterable[Any]) -> ChangeloggedSet:
        self.difference_update(other)
        return self

    def __iand__(self, other: Iterable[Any]) -> ChangeloggedSet:
        self.intersection_update(other)
        return self

    def __ixor__(self, other: Iterable[Any]) -> ChangeloggedSet:  # type: ignore[misc]
        self.symmetric_difference_update(other)
        return self

    # -- plain-set conveniences ------------------------------------------------------------

    def as_set(self) -> set[Any]:
        """A plain copy of the members."""
        return set(self._members)

    def __repr__(self) -> str:
        return f"<ChangeloggedSet {self._key!r}: {self._members!r}>"

    __hash__ = None  # type: ignore[assignment]


class _SetValues:
    """What SetTable and SetGlobalTable share: set values in and out of the store.

    ``value_type`` is the type of the set's *members* (``str``, a Record...);
    the stored value is the list of members in the table's value codec.
    """

    member_type: Any
    name: str
    manager: SetTableManager

    def _setup_members(self, value_type: Any, options: dict[str, Any]) -> dict[str, Any]:
        """Take the members' type and the manager options out of ``options``."""
        manager = {
            "start": bool(options.pop("start_manager", False)),
            "name": options.pop("manager_topic_name", None),
            "suffix": options.pop("manager_topic_suffix", None),
        }
        self.member_type = value_type
        return manager

    def _member(self, value: Any) -> Any:
        member_type = self.member_type
        if isinstance(member_type, type) and issubclass(member_type, Record) and isinstance(value, dict):
            return member_type.from_data(value)
        if isinstance(value, list):
            return tuple(value)  # set members must be hashable; lists come back from a tuple
        return value

    def _as_members(self, value: Any) -> set[Any]:
        if isinstance(value, ChangeloggedSet):
            return value.as_set()
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(
                f"table {self.name!r} is a SetTable: assign a set (or another iterable), got {value!r:.80}"
            )
        return set(value)


def _set_table_init(
    table: SetTable | SetGlobalTable,
    base: type[Table],
    app: App,
    name: str,
    value_type: Any,
    manager: TableManager,
    options: dict[str, Any],
) -> None:
    table.name = name
    wanted = table._setup_members(value_type, options)
    key_serializer = options.get("key_serializer")
    options.pop("default", None)  # a missing key is an empty set
    # The members' type is checked by _member(); the stored value is a list.
    base.__init__(table, app, name, default=None, value_type=None, manager=manager, **options)
    table.value_type = value_type
    topic = wanted["name"] or f"{app.conf.appid}-{name}{wanted['suffix'] or '-setmanager'}"
    table.manager = SetTableManager(table, topic, key_serializer=key_serializer, start=wanted["start"])


class SetTableManager:
    """Set operations sent to the worker that owns the key (Faust's ``table.manager``).

    ``await table.manager.add(key, member)`` (and ``discard``, ``clear``,
    ``difference_update``, ``intersection_update``,
    ``symmetric_difference_update``) sends the operation to the manager
    topic (``<app id>-<table>-setmanager``, keyed and partitioned like the
    table), from anywhere: a web view, a timer, another app. A worker of an
    app whose table has ``start_manager=True`` runs an agent that applies
    each operation to the table, in the order sent per key, with an agent's
    acks and commits. Without it the operations wait in the topic.
    """

    def __init__(
        self, table: SetTable | SetGlobalTable, topic_name: str, *, key_serializer: Any, start: bool
    ) -> None:
        self.table = table
        self.topic_name = topic_name
        self._key_serializer = key_serializer
        self._topic: Topic[Any] | None = None
        if start:  # declared (created at start) only by the app that applies the operations
            table.app.agent(self.topic, name=f"{table.name}-setmanager")(self._apply)

    @property
    def topic(self) -> Topic[Any]:
        """The manager topic (keys like the table's, JSON operations)."""
        if self._topic is None:
            self._topic = self.table.app.topic(
                self.topic_name,
                key_type=self.table.key_type,
                key_serializer=self._key_serializer,
                value_serializer="json",
                partitions=self.table.partitions,
            )
        return self._topic

    async def add(self, key: Any, member: Any) -> None:
        await self._send(key, "add", [member])

    async def discard(self, key: Any, member: Any) -> None:
        await self._send(key, "discard", [member])

    async def clear(self, key: Any) -> None:
        await self._send(key, "clear", [])

    async def difference_update(self, key: Any, members: Iterable[Any]) -> None:
        await self._send(key, "difference_update", list(members))

    async def intersection_update(self, key: Any, members: Iterable[Any]) -> None:
        await self._send(key, "intersection_update", list(members))

    async def symmetric_difference_update(self, key: Any, members: Iterable[Any]) -> None:
        await self._send(key, "symmetric_difference_update", list(members))

    async def _send(self, key: Any, action: str, members: list[Any]) -> None:
        # The key also travels in the (JSON) value, so an untyped table gets it
        # back as it was given (a str, not the message key's bytes).
        await self.topic.send(key=key, value={"action": action, "key": key, "members": members})

    async def _apply(self, stream: Stream[Any]) -> None:
        table = self.table
        async for event in stream.events():
            operation = event.value if isinstance(event.value, dict) else {}
            action = operation.get("action")
            members = [table._member(m) for m in operation.get("members") or ()]
            key = operation.get("key", event.key)
            key_type = table.key_type
            if isinstance(key_type, type) and issubclass(key_type, Record) and isinstance(key, dict):
                key = key_type.from_data(key)
            target: ChangeloggedSet = table[key]  # type: ignore[misc]  # SetGlobalTable shares SetTable.__getitem__
            if action == "add":
                target.update(members)
            elif action == "discard":
                target.difference_update(members)
            elif action == "clear":
                target.clear()
            elif action in ("difference_update", "intersection_update"):
                getattr(target, action)(members)
            elif action == "symmetric_difference_update":
                target.symmetric_difference_update(members)
            else:
                m = event.message
                raise ConfigurationError(
                    f"SetTable {table.name!r} manager: unknown operation {action!r} in "
                    f"{m.topic}[{m.partition}]@{m.offset} (add, discard, clear, difference_update, "
                    "intersection_update, symmetric_difference_update)"
                )


class SetTable(_SetValues, Table):
    """A table whose values are sets (create with :meth:`App.SetTable`).

    ``table[key]`` is a :class:`ChangeloggedSet` (empty for a missing key):
    ``table[k].add(x)``, ``.discard(x)``, ``.update(...)``, ``|=``, ``-=``
    write the key's new set to the table and, at the next commit, to the
    changelog. ``value_type`` is the type of the members.
    """

    def __init__(
        self, app: App, name: str, *, value_type: Any = None, manager: TableManager, **options: Any
    ) -> None:
        _set_table_init(self, Table, app, name, value_type, manager, options)

    def _decode_value(self, raw: bytes) -> Any:
        members = revive(self.schema.value_codec.loads(raw))
        return {self._member(m) for m in members or ()}

    def __getitem__(self, key: Any) -> ChangeloggedSet:
        _, value = self._find(self._encode_key(key))
        return ChangeloggedSet(self, key, () if value is _MISSING else value)

    def get(self, key: Any, default: Any = None) -> Any:
        _, value = self._find(self._encode_key(key))
        return default if value is _MISSING else ChangeloggedSet(self, key, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, self._as_members(value))

    def items(self) -> Iterator[tuple[Any, ChangeloggedSet]]:  # type: ignore[override]
        """Every (key, set) of the partitions this worker serves."""
        for key, members in Table.items(self):
            yield key, ChangeloggedSet(self, key, members)


class SetGlobalTable(_SetValues, GlobalTable):
    """A :class:`SetTable` every worker holds in full (create with :meth:`App.SetGlobalTable`)."""

    def __init__(
        self, app: App, name: str, *, value_type: Any = None, manager: TableManager, **options: Any
    ) -> None:
        _set_table_init(self, GlobalTable, app, name, value_type, manager, options)

    _decode_value = SetTable._decode_value
    __getitem__ = SetTable.__getitem__
    get = SetTable.get
    items = SetTable.items  # type: ignore[assignment]

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, self._as_members(value))
