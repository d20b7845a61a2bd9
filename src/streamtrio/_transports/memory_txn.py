"""Transactions of the ``memory://`` broker, modelled on Kafka's.

As in Kafka, a transactional producer's messages are appended to the
partition logs at once (they get their offsets and delivery reports), but a
partition with an open transaction has a *last stable offset*: the first
offset of its oldest open transaction. Readers and group consumers (all of
them ``read_committed``, librdkafka's default) never read past it, and skip
the offsets of aborted transactions. Committing a transaction makes its
messages readable and commits its group offsets in one step; aborting it
marks its messages aborted, so no reader ever sees them.

Fencing: each transactional id has an epoch in the broker's
:class:`TransactionCoordinator`. Opening a producer with an id bumps the
epoch and aborts the transaction the previous holder left open (what
``init_transactions`` does); every later call of the older producer raises
:class:`~streamtrio.ProducerFencedError`.

Unlike Kafka, commit and abort write no control records, so offsets stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._types import TP

if TYPE_CHECKING:
    from .memory import _Group, _Partition

__all__ = ["MemoryGroupMetadata", "MemoryTransaction", "TransactionCoordinator"]


@dataclass(frozen=True, slots=True)
class MemoryGroupMetadata:
    """What ``MemoryConsumer.group_metadata()`` returns."""

    group_id: str
    member_id: str
    generation: int


class MemoryTransaction:
    """One open transaction: its messages per partition and its group offsets."""

    __slots__ = ("messages", "offsets", "transactional_id")

    def __init__(self, transactional_id: str) -> None:
        self.transactional_id = transactional_id
        self.messages: dict[_Partition, list[int]] = {}
        self.offsets: dict[_Group, dict[TP, int]] = {}

    def add(self, part: _Partition, offset: int) -> None:
        """A message of this transaction was appended to ``part`` at ``offset``."""
        offsets = self.messages.get(part)
        if offsets is None:
            self.messages[part] = [offset]
            part.open_txns[self] = offset  # holds the partition's last stable offset
        else:
            offsets.append(offset)

    def commit(self) -> None:
        """Make the messages readable and commit the offsets, in one step."""
        for group, offsets in self.offsets.items():
            group.committed.update(offsets)
        self._end()

    def abort(self) -> None:
        """Hide the messages from every reader, forever; drop the offsets."""
        for part, offsets in self.messages.items():
            part.aborted.update(offsets)
        self._end()

    def _end(self) -> None:
        parts = self.messages
        self.messages = {}
        self.offsets = {}
        for part in parts:
            part.open_txns.pop(self, None)
            part.wake()


class TransactionCoordinator:
    """The broker's transactional ids: their epochs and open transactions."""

    def __init__(self) -> None:
        self._epochs: dict[str, int] = {}
        self._open: dict[str, MemoryTransaction] = {}

    def init(self, transactional_id: str) -> int:
        """A producer opened with ``transactional_id``: fence older ones, abort their
        open transaction, and return the new epoch."""
        epoch = self._epochs.get(transactional_id, -1) + 1
        self._epochs[transactional_id] = epoch
        old = self._open.pop(transactional_id, None)
        if old is not None:
            old.abort()
        return epoch

    def epoch(self, transactional_id: str) -> int:
        return self._epochs.get(transactional_id, -1)

    def begin(self, transactional_id: str) -> MemoryTransaction:
        txn = self._open[transactional_id] = MemoryTransaction(transactional_id)
        return txn

    def end(self, txn: MemoryTransaction) -> None:
        if self._open.get(txn.transactional_id) is txn:
            del self._open[txn.transactional_id]

    def open_transactions(self) -> list[str]:
        """The transactional ids with an open transaction (for tests)."""
        return sorted(self._open)
