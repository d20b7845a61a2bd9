"""The cluster map: which worker actively holds (and which keep standbys of) each partition.

librdkafka gives no pluggable assignor from Python and group descriptions
carry no assignments on every broker, so the workers tell each other. After
every rebalance, and when it stops, each worker publishes a *claim* to the
compacted internal topic ``<app id>-__cluster`` (one partition), keyed by its
worker id::

    {"worker": "host-1a2b3c", "url": "http://host:6066", "generation": 4,
     "active": [["orders", 0], ["orders", 1]], "standby": [["app-totals-changelog", 2]],
     "timestamp": 1718000000.0}

A worker that stops publishes a tombstone (``None`` value). Every worker
follows the topic from the beginning with a :class:`~streamtrio._transports.base.Reader`
and folds the claims into a :class:`ClusterMap`.

Ordering. Claims are ordered by their *offset* in the cluster topic (one
partition: the broker's order, no clocks involved). When two workers claim the
same partition, the later claim wins: a crashed worker's claims are therefore
superseded as soon as the partition's new owner publishes. A worker whose
every claim has been superseded and that has not published since is *stale*
(it crashed, or is stuck): :meth:`ClusterMap.workers` leaves it out.

A revocation is published and *delivered* before the partitions are given
up, so a worker's withdrawal always precedes, in the topic, the next owner's
claim.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ._exceptions import StreamtrioError
from ._topic import Topic
from ._transports.base import OFFSET_BEGINNING
from ._types import TP, Message

if TYPE_CHECKING:
    from ._app import App
    from ._worker import Worker

__all__ = ["ClusterMap", "ClusterMember", "WorkerInfo", "cluster_topic_name"]

log = logging.getLogger(__name__)


def cluster_topic_name(app_id: str) -> str:
    """The compacted internal topic the workers of ``app_id`` publish their claims to."""
    return f"{app_id}-__cluster"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker's latest claim.

    Attributes:
        worker_id: unique per worker run.
        url: the canonical web URL other workers use (``None``: web disabled).
        generation: the worker's local rebalance counter when it published.
        active: partitions it actively holds.
        standby: partitions it keeps a standby copy of.
        timestamp: wall-clock seconds when it published (informational;
            ordering uses ``sequence``).
        sequence: the claim's offset in the cluster topic.
    """

    worker_id: str
    url: str | None
    generation: int
    active: frozenset[TP]
    standby: frozenset[TP]
    timestamp: float
    sequence: int = -1

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "worker": self.worker_id,
                "url": self.url,
                "generation": self.generation,
                "active": sorted([tp.topic, tp.partition] for tp in self.active),
                "standby": sorted([tp.topic, tp.partition] for tp in self.standby),
                "timestamp": self.timestamp,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, *, sequence: int) -> WorkerInfo:
        """Decode a claim.

        Raises:
            ValueError: the bytes are not a claim.
        """
        try:
            doc = json.loads(data)
            return cls(
                worker_id=str(doc["worker"]),
                url=None if doc.get("url") is None else str(doc["url"]),
                generation=int(doc.get("generation", 0)),
                active=frozenset(TP(str(t), int(p)) for t, p in doc.get("active", ())),
                standby=frozenset(TP(str(t), int(p)) for t, p in doc.get("standby", ())),
                timestamp=float(doc.get("timestamp", 0.0)),
                sequence=sequence,
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a cluster claim: {data[:200]!r}") from exc

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker_id,
            "url": self.url,
            "generation": self.generation,
            "active": _tp_lists(self.active),
            "standby": _tp_lists(self.standby),
            "timestamp": self.timestamp,
            "sequence": self.sequence,
        }


def _tp_lists(tps: Iterable[TP]) -> dict[str, list[int]]:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(tps):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return by_topic


@dataclass(slots=True)
class ClusterMap:
    """Partition -> worker, folded from the claims in the cluster topic.

    Pure data plus one way to wait: :meth:`apply` and :meth:`remove` change
    it; :meth:`wait_changed` sleeps until the :attr:`version` moves.
    """

    _claims: dict[str, WorkerInfo] = field(default_factory=dict)
    _owners: dict[TP, WorkerInfo] = field(default_factory=dict)
    _standbys: dict[TP, list[WorkerInfo]] = field(default_factory=dict)
    _live: dict[str, WorkerInfo] = field(default_factory=dict)
    #: bumped on every change
    version: int = 0
    _event: trio.Event | None = None

    # -- changes ----------------------------------------------------------------

    def apply(self, info: WorkerInfo) -> None:
        """Take ``info`` as the latest claim of its worker (an older sequence is ignored)."""
        current = self._claims.get(info.worker_id)
        if current is not None and current.sequence > info.sequence >= 0:
            return
        self._claims[info.worker_id] = info
        self._rebuild()

    def remove(self, worker_id: str) -> None:
        """Forget a worker (it published a tombstone)."""
        if self._claims.pop(worker_id, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        owners: dict[TP, WorkerInfo] = {}
        standbys: dict[TP, list[WorkerInfo]] = {}
        for info in sorted(self._claims.values(), key=lambda i: i.sequence):
            for tp in info.active:
                owners[tp] = info  # the latest claim wins
            for tp in info.standby:
                standbys.setdefault(tp, []).append(info)
        live: dict[str, WorkerInfo] = {}
        for worker_id, info in self._claims.items():
            # Every active claim taken over by a later claim of another worker,
            # and nothing published since: the worker crashed or is stuck.
            if info.active and all(owners[tp] is not info for tp in info.active):
                continue
            live[worker_id] = info
        # A standby on a stale worker, or on the active owner itself, is no standby.
        for tp, infos in standbys.items():
            owner = owners.get(tp)
            standbys[tp] = [i for i in infos if i.worker_id in live and i is not owner]
        self._owners = owners
        self._standbys = {tp: infos for tp, infos in standbys.items() if infos}
        self._live = live
        self.version += 1
        event, self._event = self._event, None
        if event is not None:
            event.set()

    # -- queries ----------------------------------------------------------------

    def owner(self, tp: TP) -> WorkerInfo | None:
        """The worker that actively holds ``tp``, if any is known."""
        return self._owners.get(tp)

    def standbys(self, tp: TP) -> list[WorkerInfo]:
        """The live workers that keep a standby copy of ``tp``."""
        return list(self._standbys.get(tp, ()))

    def workers(self) -> dict[str, WorkerInfo]:
        """Live workers by id (stale ones, whose every claim was superseded, are left out)."""
        return dict(self._live)

    def stale_workers(self) -> dict[str, WorkerInfo]:
        """Workers whose every claim was superseded by a later claim of another worker."""
        return {w: i for w, i in self._claims.items() if w not in self._live}

    def partitions_of(self, worker_id: str) -> frozenset[TP]:
        """The partitions the map currently resolves to ``worker_id``."""
        return frozenset(tp for tp, info in self._owners.items() if info.worker_id == worker_id)

    def owners(self) -> dict[TP, WorkerInfo]:
        return dict(self._owners)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able view: workers, and per topic the owner URL of each partition."""
        topics: dict[str, dict[str, Any]] = {}
        for tp, info in sorted(self._owners.items()):
            topics.setdefault(tp.topic, {})[str(tp.partition)] = {
                "active": info.url,
                "worker": info.worker_id,
                "standby": [s.url for s in self._standbys.get(tp, ())],
            }
        return {
            "version": self.version,
            "workers": {w: i.as_dict() for w, i in sorted(self._live.items())},
            "stale": sorted(self.stale_workers()),
            "partitions": topics,
        }

    # -- waiting ----------------------------------------------------------------

    async def wait_changed(self, version: int | None = None) -> int:
        """Wait until :attr:`version` differs from ``version`` (default: the current one).

        Returns:
            The new version.
        """
        target = self.version if version is None else version
        while self.version == target:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        await trio.lowlevel.checkpoint()
        return self.version


def _new_worker_id() -> str:
    host = socket.gethostname().split(".")[0] or "worker"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ClusterMember:
    """Worker component: publishes this worker's claims and follows everyone's (``app.cluster``).

    A revocation is published inline, in the revoke hook, and delivered before
    the partitions are given up. An assignment is published by a background
    task once the worker has finished recovering the new partitions, so other
    workers never send requests to a partition whose tables are not ready.

    Args:
        app: the app; its cluster topic is declared with its other topics.
        url: gives this worker's canonical URL once the web server is bound
            (``None`` when the web server is disabled).
    """

    name = "cluster"

    def __init__(self, app: App, url: Callable[[], str | None]) -> None:
        self.app = app
        self._url = url
        self.worker_id = _new_worker_id()
        self.map = ClusterMap()
        self.topic_name = cluster_topic_name(app.id)
        #: whether the cluster topic was read to its end once since the worker started
        self.caught_up = False
        #: claims published by this worker run
        self.published = 0
        self._worker: Worker | None = None
        self._active: frozenset[TP] = frozenset()
        self._publish_lock: trio.Lock | None = None
        self._wake: trio.Event | None = None

    def topic(self) -> Topic[Any]:
        return Topic(
            self.app,
            topics=[self.topic_name],
            partitions=1,
            compacting=True,
            internal=True,
            key_serializer="raw",
            value_serializer="raw",
        )

    # -- the Component protocol ----------------------------------------------------

    def attach(self, worker: Worker) -> None:
        self._worker = worker
        self.map = ClusterMap()
        self.caught_up = False
        self.published = 0
        self._active = frozenset()
        self.worker_id = _new_worker_id()
        worker.on_assign_hooks.append(self._on_assigned)
        worker.on_revoke_hooks.append(self._on_revoked)

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        """Follow the cluster topic and publish; publish a tombstone when cancelled (worker stops)."""
        self._publish_lock = trio.Lock()
        self._wake = trio.Event()
        try:
            async with worker.transport.open_reader() as reader:
                reader.assign_nowait({TP(self.topic_name, 0): OFFSET_BEGINNING})
                caught_up = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._follow, reader, caught_up)
                    nursery.start_soon(self._publisher, worker)
                    with trio.move_on_after(self.app.conf.broker_request_timeout):
                        await caught_up.wait()
                    if not caught_up.is_set():
                        log.warning("cluster map: %s not read to its end in time", self.topic_name)
                    task_status.started()
        finally:
            self._wake = None
            limit = worker.transport.close_time_left(self.app.conf.shutdown_timeout)
            with trio.move_on_after(limit, shield=True):
                await self._send(tombstone=True)

    async def _follow(self, reader: Any, caught_up: trio.Event) -> None:
        tp = TP(self.topic_name, 0)
        while True:
            batch = await reader.getmany()
            for message in batch.messages:
                self._apply(message)
            if tp in batch.eof and not caught_up.is_set():
                self.caught_up = True
                caught_up.set()

    def _apply(self, message: Message) -> None:
        if message.key is None:
            return
        worker_id = message.key.decode(errors="replace")
        if message.value is None:
            self.map.remove(worker_id)
            return
        try:
            info = WorkerInfo.from_json(message.value, sequence=message.offset)
        except ValueError as exc:
            log.warning("cluster map: ignoring %s[0]@%d: %s", message.topic, message.offset, exc)
            return
        self.map.apply(info)

    async def _publisher(self, worker: Worker) -> None:
        while True:
            wake = self._wake
            assert wake is not None
            await wake.wait()
            self._wake = trio.Event()
            # Recovery runs in the assign hooks; the worker clears this set
            # after the last hook. Polled: it happens once per rebalance.
            while worker._recovering:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await self._send()

    def publish_soon(self) -> None:
        """Publish this worker's claim again soon (e.g. its standby partitions changed)."""
        if self._wake is not None:
            self._wake.set()

    # -- the claim --------------------------------------------------------------------

    def claim(self) -> WorkerInfo:
        """This worker's claim now: its partitions, its tables' partitions, its standbys."""
        worker = self._worker
        active = self._active
        return WorkerInfo(
            worker_id=self.worker_id,
            url=self._url(),
            generation=worker.generation if worker is not None else 0,
            active=active | self.table_partitions(active),
            standby=self._standby_partitions(),
            timestamp=time.time(),
        )

    def table_partitions(self, assigned: Iterable[TP]) -> frozenset[TP]:
        """Changelog partitions of the tables that go with these source partitions.

        As the table manager places them: partition N of every (non-global)
        table lives with partition N of the agents' source topics.
        """
        manager = getattr(self.app, "_table_manager", None)
        if not manager:
            return frozenset()
        numbers = {tp.partition for tp in assigned if _is_source(self.app, tp.topic)}
        return frozenset(
            table.changelog_tp(n)
            for table in manager.values()
            if not table.is_global
            for n in numbers
            if n < table.partitions
        )

    def _standby_partitions(self) -> frozenset[TP]:
        manager = getattr(self.app, "_table_manager", None)
        if not manager or not manager.running:
            return frozenset()
        return frozenset(manager.statistics().standbys)

    async def _send(self, *, tombstone: bool = False) -> None:
        worker = self._worker
        if worker is None or worker.producer is None:
            return
        lock = self._publish_lock or trio.Lock()
        try:
            limit = worker.transport.close_time_left(self.app.conf.broker_request_timeout)
            with trio.move_on_after(limit) as scope:
                async with lock:
                    # Computed under the lock: the claim sent last is the current one.
                    value = None if tombstone else self.claim().to_json()
                    await worker.producer.send(self.topic_name, self.worker_id.encode(), value, partition=0)
                    self.published += 1
            if scope.cancelled_caught:
                log.error("cluster map: publishing this worker's claim timed out")
        except StreamtrioError as exc:
            log.error("cluster map: publishing this worker's claim failed: %s", exc)

    async def _on_assigned(self, assigned: frozenset[TP]) -> None:
        self._active = self._active | assigned
        self.publish_soon()

    async def _on_revoked(self, revoked: frozenset[TP]) -> None:
        # Published by the publisher task: a rebalance never waits on the broker
        # for a routing hint (the new owner publishes its own claim).
        self._active = self._active - revoked
        self.publish_soon()


def _is_source(app: App, topic: str) -> bool:
    return any(isinstance(a.channel, Topic) and a.channel.matches(topic) for a in app.agents.values())
