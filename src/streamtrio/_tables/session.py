"""Session windows: ``app.Table(...).session(gap, expires=...)``.

Per key, events closer than ``gap`` to each other form one session
``[first event time, last event time]``. A session is stored as a window key
of the table (the key's bytes, then start and end, see
:mod:`._tables.windowed`), so it is changelogged, recovered and followed like
any key; its close is a durable "close" timer of the table's
:mod:`timer service <._tables.timers>` at ``end + gap + expires``.

Rules (``t`` is the event's timestamp, stream time the newest event
timestamp of the partition, see ``docs/windows.md``):

* an event joins every session with ``start - gap <= t <= end + gap``; two or
  more such sessions (a late event bridging them) merge into one, their values
  combined with ``merge`` (``+`` by default), then the event's update applies;
* an event with ``t < stream time - expires`` is late: dropped and counted;
* a session closes once stream time passes ``end + gap + expires``: its
  ``on_window_close((key, (start, end)), value)`` runs once, then it is
  deleted. No event that is not late can touch a closed session
  (``t >= stream time - expires > end + gap``), so each reported session is final.

With ``expires=None`` sessions never close and no event is late.
"""

from __future__ import annotations

import logging
import operator
from bisect import insort
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError, EncodeError, TableError
from .._stream import current_event
from .base import MAX_KEY_SIZE
from .table import _MISSING, DELETED, Table, TablePartition
from .timers import KeyTimer, timer_key
from .windowed import _SUFFIX, Emit, add_in_place_operators, emit_update, split_window_key, window_key
from .windows import Duration, WindowRange, _duration_us, _grace_and_expires, from_us, to_us

if TYPE_CHECKING:
    from .._stream import Event
    from .base import StorePartition
    from .timers import Clock

__all__ = ["SessionSet", "SessionWindow", "SessionWrapper"]

log = logging.getLogger(__name__)

_LOWEST = -(1 << 63)


class SessionWindow:
    """Sessions of activity separated by at least ``gap`` of inactivity.

    Args:
        gap: the inactivity gap (seconds, ``timedelta`` or ``"30s"``).
        expires: how long, after a session could last grow (``end + gap``), it
            is kept; then it is deleted. ``None``: never (unless ``grace`` is given).
        grace: how long, after ``end + gap``, a session still accepts late
            events; then it is final (``on_window_close`` reports it with
            ``emit="final"``). Defaults to ``expires``; at most ``expires``.
    """

    def __init__(self, gap: Duration, expires: Duration | None = None, grace: Duration | None = None) -> None:
        self._gap = _duration_us(gap, "session gap")
        self._grace, self._expires = _grace_and_expires(grace, expires, "session")

    @property
    def gap(self) -> float:
        return from_us(self._gap)

    @property
    def expires(self) -> float | None:
        return None if self._expires is None else from_us(self._expires)

    @property
    def grace(self) -> float | None:
        return None if self._grace is None else from_us(self._grace)

    def __repr__(self) -> str:
        expires = "" if self._expires is None else f", expires={from_us(self._expires)!r}"
        if self._grace is not None and self._grace != self._expires:
            expires += f", grace={from_us(self._grace)!r}"
        return f"SessionWindow(gap={self.gap!r}{expires})"


class Sessions:
    """The session state of one table (``table._sessions``)."""

    def __init__(
        self, table: Table, window: SessionWindow, merge: Callable[[Any, Any], Any], emit: Emit = "final"
    ) -> None:
        self.table = table
        self.window = window
        self.merge = merge
        self.emit = emit
        self.late_dropped = 0
        self.closed = 0
        self.merged = 0
        #: per partition (its store view): key bytes -> sorted [(start, end)]
        self._index: dict[int, tuple[StorePartition, dict[bytes, list[tuple[int, int]]]]] = {}
        timers = table._timer_service()
        timers.closer = self._close
        timers.expirer = self._expire
        timers.idle_advance = True

    def reset(self) -> None:
        self._index = {}

    def decode_key(self, raw: bytes) -> Any:
        split = split_window_key(raw)
        if split is None:
            return self.table.schema.loads_key(raw)
        kbytes, start, end = split
        return self._plain_key(kbytes), (from_us(start), from_us(end))

    def _plain_key(self, kbytes: bytes) -> Any:
        return self.table.schema.loads_key(kbytes, topic=self.table.changelog_topic_name)

    def encode_key(self, key: Any) -> bytes:
        kbytes = self.table._encode_key(key)
        if len(kbytes) > MAX_KEY_SIZE - _SUFFIX:
            raise EncodeError(
                f"session table {self.table.name!r}: key {key!r:.80} encodes to {len(kbytes)} bytes; "
                f"a session key must be at most {MAX_KEY_SIZE - _SUFFIX} bytes"
            )
        return kbytes

    # -- the index ---------------------------------------------------------------------

    def sessions_of(self, n: int, part: TablePartition, kbytes: bytes) -> list[tuple[int, int]]:
        """The live sessions of ``kbytes`` in a served partition, oldest first (an index kept in memory)."""
        view = part.view
        if view is None:
            raise TableError(f"session table {self.table.name!r}: partition {n} is not served here")
        entry = self._index.get(n)
        if entry is None or entry[0] is not view:
            entry = self._index[n] = (view, {})
        keys = entry[1]
        found = keys.get(kbytes)
        if found is None:
            found = []
            lo = window_key(kbytes, _LOWEST, _LOWEST)
            hi = kbytes + b"\xff" * (_SUFFIX + 1)
            overlay = part.merged_overlay() if part.pending or part.dirty.data else {}
            for raw, _vbytes in view.range(lo, hi):
                if len(raw) == len(kbytes) + _SUFFIX:
                    got = overlay.get(raw)
                    if got is None or got[1] is not DELETED:
                        split = split_window_key(raw)
                        assert split is not None
                        found.append((split[1], split[2]))
            found.sort()
            keys[kbytes] = found
        return found

    # -- writes ------------------------------------------------------------------------

    def apply(self, key: Any, op: Callable[[Any, Any], Any], value: Any, event: Event[Any] | None) -> None:
        table = self.table
        event = event or current_event()
        if event is None:
            raise TableError(
                f"session table {table.name!r}: a session write needs an event (its timestamp); "
                "write from an agent"
            )
        kbytes = self.encode_key(key)
        n = table._event_partition()  # also moves the partition's stream time
        if n is not None and n < 0:
            table._manager.discarded_writes += 1
            return  # the event's partition was lost meanwhile: nothing is written for it
        if n is None:
            raise TableError(
                f"session table {table.name!r}: the event {event!r:.80} is not from a source "
                "partition this worker owns"
            )
        part = table._parts[n]
        window = self.window
        timers = table._timers
        assert timers is not None
        t = to_us(event.message.timestamp)
        stream = timers.state(n, part)
        stream_time = None if stream is None else stream.stream
        if window._grace is not None and stream_time is not None and t < stream_time - window._grace:
            self.late_dropped += 1
            log.debug("session table %r: late event for key %r at %s dropped", table.name, key, t)
            return
        sessions = self.sessions_of(n, part, kbytes)
        gap = window._gap
        joined = [s for s in sessions if s[0] - gap <= t <= s[1] + gap]
        current: Any = _MISSING
        start, end = t, t
        for s, e in joined:
            raw = window_key(kbytes, s, e)
            old = table._get_in(part, raw)
            if old is not _MISSING:
                current = old if current is _MISSING else self.merge(current, old)
            table._put(part, raw, (key, (from_us(s), from_us(e))), DELETED, None)
            self._cancel_timers(kbytes, s, e)
            sessions.remove((s, e))
            start, end = min(start, s), max(end, e)
        if len(joined) > 1:
            self.merged += len(joined) - 1
        if op is _replace:
            result = value
        else:
            if current is _MISSING:
                if table.default is None:
                    raise KeyError(key)
                current = table.default()
            result = op(current, value)
        raw = window_key(kbytes, start, end)
        table._put(part, raw, (key, (from_us(start), from_us(end))), result, table._encode_value(key, result))
        insort(sessions, (start, end))
        self._schedule_timers(kbytes, start, end)
        if self.emit == "update":
            for s, e in joined:
                if (s, e) != (start, end):
                    emit_update(table, (key, (from_us(s), from_us(e))), None)  # merged away: a tombstone
            emit_update(table, (key, (from_us(start), from_us(end))), result)

    def _timers_of(self, kbytes: bytes, start: int, end: int) -> list[tuple[bytes, Clock]]:
        """The internal timers of a session: its close (report) and its expiry (delete), as needed."""
        window = self.window
        grace, expires = window._grace, window._expires
        if grace is None or expires is None:
            return []
        found: list[tuple[bytes, Clock]] = []
        final = self.emit == "final"
        if final:
            found.append((timer_key("close", end + window._gap + grace + 1, kbytes), "close"))
        if not final or expires > grace:
            found.append((timer_key("expire", end + window._gap + expires + 1, kbytes), "expire"))
        return found

    def _schedule_timers(self, kbytes: bytes, start: int, end: int) -> None:
        timers = self.table._timers
        assert timers is not None
        for raw, clock in self._timers_of(kbytes, start, end):
            timers.schedule_raw(raw, kbytes, [start, end], clock)

    def _cancel_timers(self, kbytes: bytes, start: int, end: int) -> None:
        timers = self.table._timers
        if timers is None:
            return
        for raw, _clock in self._timers_of(kbytes, start, end):
            timers.cancel_raw(raw, kbytes)

    async def _close(self, timer: KeyTimer) -> None:
        """The close timer of a session fired (emit="final"): report it once; delete it
        now, or at its expiry when ``expires > grace``."""
        found = self._live(timer)
        if found is None:
            return  # merged into another session meanwhile
        part, raw, key, value = found
        await self.table.on_window_close(key, value)
        window = self.window
        if window._grace == window._expires:
            self._remove(timer, part, raw, key)
        self.closed += 1

    async def _expire(self, timer: KeyTimer) -> None:
        """The expiry timer of a session fired: delete it (reported already, or emit="update")."""
        found = self._live(timer)
        if found is not None:
            part, raw, key, _value = found
            self._remove(timer, part, raw, key)
            if self.emit == "update":
                self.closed += 1

    def _live(self, timer: KeyTimer) -> tuple[TablePartition, bytes, Any, Any] | None:
        """The session of an internal timer, if it is still there."""
        table = self.table
        start, end = timer.value
        part = table._parts.get(timer.partition)
        if part is None:
            return None
        raw = window_key(timer.key, start, end)
        value = table._get_in(part, raw)
        if value is _MISSING:
            return None
        return part, raw, (self._plain_key(timer.key), (from_us(start), from_us(end))), value

    def _remove(self, timer: KeyTimer, part: TablePartition, raw: bytes, key: Any) -> None:
        table = self.table
        n = timer.partition
        if table._parts.get(n) is not part:
            return  # revoked while a callback ran: the new owner closes it
        table._put(part, raw, key, DELETED, None)
        entry = self._index.get(n)
        if entry is not None and entry[0] is part.view:
            sessions = entry[1].get(timer.key)
            start, end = timer.value
            if sessions is not None and (start, end) in sessions:
                sessions.remove((start, end))

    def info(self) -> dict[str, Any]:
        return {
            "window": repr(self.window),
            "sessions_closed": self.closed,
            "sessions_merged": self.merged,
            "late_events_dropped": self.late_dropped,
        }


def _replace(_old: Any, new: Any) -> Any:
    return new


class SessionSet:
    """The sessions of one key (what ``sessions[key]`` returns).

    In-place operators (``sessions[key] += 1``) add the event to its session,
    merging the sessions it bridges; :meth:`value` reads the session at the
    event's timestamp.
    """

    __slots__ = ("event", "key", "wrapper")

    def __init__(self, key: Any, wrapper: SessionWrapper, event: Event[Any] | None) -> None:
        self.key = key
        self.wrapper = wrapper
        self.event = event

    def apply(self, op: Callable[[Any, Any], Any], value: Any, event: Event[Any] | None = None) -> SessionSet:
        self.wrapper._sessions.apply(self.key, op, value, event or self.event)
        return self

    def value(self, event: Event[Any] | None = None) -> Any:
        """The value of the session containing the event's timestamp (else the default)."""
        event = event or self.event or current_event()
        if event is None:
            raise TableError("SessionSet.value() needs an event")
        t = event.message.timestamp
        for (start, end), value in self.wrapper.sessions(self.key):
            if start <= t <= end:
                return value
        table = self.wrapper.table
        if table.default is not None:
            return table.default()
        raise KeyError(self.key)

    def __repr__(self) -> str:
        return f"<SessionSet {self.wrapper.table.name}[{self.key!r}]>"


add_in_place_operators(SessionSet)


class SessionWrapper:
    """A session-windowed view of a table (``table.session(gap, expires=...)``)."""

    def __init__(self, table: Table) -> None:
        sessions = table._sessions
        if sessions is None:
            raise ConfigurationError(f"table {table.name!r} has no session window")
        self.table = table
        self._sessions: Sessions = sessions

    @property
    def window(self) -> SessionWindow:
        return self._sessions.window

    def __getitem__(self, key: Any) -> SessionSet:
        return SessionSet(key, self, current_event())

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, SessionSet):
            return  # ``sessions[k] += n``: the in-place operator already wrote
        self._sessions.apply(key, _replace, value, None)

    def sessions(self, key: Any) -> list[tuple[WindowRange, Any]]:
        """The live sessions of ``key`` as ``((start, end), value)``, oldest first."""
        s = self._sessions
        table = self.table
        table._check_running()
        kbytes = s.encode_key(key)
        found = []
        for n in table.served_partitions():
            part = table._parts[n]
            for start, end in s.sessions_of(n, part, kbytes):
                value = table._get_in(part, window_key(kbytes, start, end))
                if value is not _MISSING:
                    found.append(((from_us(start), from_us(end)), value))
        return sorted(found, key=lambda item: item[0])

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every live session as ``((key, (start, end)), value)``."""
        return self.table.items()

    @property
    def late_dropped(self) -> int:
        """Events dropped because they were older than stream time - expires."""
        return self._sessions.late_dropped

    def __repr__(self) -> str:
        return f"<SessionWrapper {self.table.name!r} {self.window!r}>"


def check_merge(merge: Any) -> Callable[[Any, Any], Any]:
    if merge is None:
        return operator.add
    if not callable(merge):
        raise ConfigurationError(f"session merge must be callable, got {merge!r}")
    return merge  # type: ignore[no-any-return]
