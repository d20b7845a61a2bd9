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
    from .manager import TableManager

__all__ = ["ChangeloggedSet", "SetGlobalTable", "SetTable"]


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

    def _setup_members(self, value_type: Any, options: dict[str, Any]) -> None:
        if options.pop("start_manager", False):
            raise ConfigurationError(
                f"table {self.name!r}: start_manager=True (Faust's SetTable manager topic, "
                "for set operations sent from other workers) is not available; change the "
                "sets in the agent that owns the key"
            )
        for faust_only in ("manager_topic_name", "manager_topic_suffix"):
            options.pop(faust_only, None)
        self.member_type = value_type

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
    table._setup_members(value_type, options)
    options.pop("default", None)  # a missing key is an empty set
    # The members' type is checked by _member(); the stored value is a list.
    base.__init__(table, app, name, default=None, value_type=None, manager=manager, **options)
    table.value_type = value_type


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
