"""Small value types shared by every layer: topic partitions, raw messages, metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["TP", "Headers", "Message", "RecordMetadata", "TopicSpec"]

#: Message headers as they cross the transport: a list of (name, value) pairs.
Headers = list[tuple[str, bytes]]


class TP(NamedTuple):
    """A topic partition."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(slots=True)
class Message:
    """A raw record as fetched from a transport, before decoding.

    Attributes:
        topic: topic name.
        partition: partition number.
        offset: offset within the partition.
        key: the raw key bytes, or ``None``.
        value: the raw value bytes, or ``None`` (a tombstone).
        timestamp: the record timestamp in seconds since the epoch.
        headers: the record headers, or ``None``.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float
    headers: Headers | None = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class RecordMetadata(NamedTuple):
    """Where a produced message landed."""

    topic: str
    partition: int
    offset: int
    timestamp: float

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic must look like when streamtrio creates it.

    Attributes:
        name: topic name.
        partitions: number of partitions.
        replication_factor: replicas per partition (``-1`` for the broker default).
        config: topic configs such as ``cleanup.policy`` or ``retention.ms``.
    """

    name: str
    partitions: int
    replication_factor: int = -1
    config: Mapping[str, str] = field(default_factory=dict)
