"""The monitor: events per second per topic and agent, commit lag per partition.

It adds nothing to the hot path. Every ``interval`` seconds it samples the
worker's lanes (:meth:`Lane.statistics`) and the commit loop
(:meth:`Committer.statistics`): the events an agent finished on a partition
since the last sample are how far that lane's frontier (every event below it
is acked) moved (from the lane's first offset for a new lane). Rates are
averaged over the last ``window`` seconds.

Commit lag of a partition is ``frontier - committed``: events already
processed whose offsets are not committed yet (what would be processed again
after a crash). Consumer lag is ``end - committed``: the partition's high
watermark as the consumer last saw it (never a fresh broker request; for
``kafka://`` librdkafka's statistics, every second) minus the committed offset
(before this worker's first commit, the offset it started reading from).

It also keeps the counters that need an event to happen (commit latency,
rebalances, decode and agent errors) as plain numbers; :mod:`._web.metrics`
turns all of it into Prometheus metrics at scrape time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ._supervisor import worker_info
from ._topic import Topic
from ._types import TP

if TYPE_CHECKING:
    from ._app import App
    from ._lanes import Inbox
    from ._worker import Worker

__all__ = ["Histogram", "Monitor", "MonitorSnapshot", "PartitionLag"]

#: Upper bounds, in seconds, of the buckets of the latency histograms.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class Histogram:
    """Observations counted in buckets (Prometheus semantics: ``le`` is inclusive)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs, ending with ``+Inf``."""
        counts = self.counts or [0] * len(self.bounds)
        return [*((repr(b), c) for b, c in zip(self.bounds, counts, strict=True)), ("+Inf", self.count)]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """How far behind the end of one partition the group's committed offset is.

    Attributes:
        end: the high watermark as the consumer last saw it (``None``: not known yet).
        committed: the committed offset, or where this worker started reading
            before its first commit (``None``: unknown).
        lag: ``end - committed`` (``None`` when either is unknown).
    """

    end: int | None
    committed: int | None

    @property
    def lag(self) -> int | None:
        if self.end is None or self.committed is None:
            return None
        return max(self.end - self.committed, 0)


@dataclass(frozen=True, slots=True)
class MonitorSnapshot:
    """Cumulative counts at one instant (trio time)."""

    at: float
    by_agent: dict[str, int]
    by_topic: dict[str, int]


class Monitor:
    """Worker component that keeps rates; :meth:`stats` gives the ``/stats/`` document.

    Args:
        app: the app whose worker is sampled.
        interval: seconds between samples.
        window: seconds the rates are averaged over.
    """

    name = "monitor"

    def __init__(self, app: App, *, interval: float = 0.5, window: float = 5.0) -> None:
        self.app = app
        self.interval = interval
        self.window = window
        self._worker: Worker | None = None
        self._reset()

    def _reset(self) -> None:
        self._last: dict[tuple[str, TP], tuple[int, int]] = {}  # (agent, tp) -> (lane id, frontier)
        self._by_agent: dict[str, int] = {}
        self._by_topic: dict[str, int] = {}
        #: events finished per (agent, partition), cumulative
        self.events: dict[tuple[str, TP], int] = {}
        self._samples: deque[MonitorSnapshot] = deque()
        #: seconds from a commit's snapshot to the group commit (or the transaction)
        self.commit_latency = Histogram()
        #: seconds from a rebalance's start (joining, or a revoke) to partitions resumed
        self.rebalance_duration = Histogram()
        self.rebalances = 0
        #: messages that could not be decoded, per (topic, value_decode_error policy)
        self.decode_errors: dict[tuple[str, str], int] = {}
        #: exceptions raised by agents (or by their outputs), per agent
        self.agent_errors: dict[str, int] = {}
        self._commit_started: tuple[float, int] | None = None  # (trio time, commits then)
        self._rebalance_since: float | None = None

    def attach(self, worker: Worker) -> None:
        self._worker = worker
        self._reset()
        worker.commit_participants.append(self)
        # First: a rebalance starts before the tables recover.
        worker.on_assign_hooks.insert(0, self._on_assign)
        worker.on_revoke_hooks.insert(0, self._on_revoke)
        if self.app._needs_group():
            self._rebalance_since = trio.current_time()  # joining the group

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        # Fired by the lifecycle component once the tables have recovered.
        signal = self.app.on_rebalance_complete
        signal.connect(self._on_rebalance_complete)
        try:
            task_status.started()
            while True:
                self.sample()
                await trio.sleep(self.interval)
        finally:
            signal.disconnect(self._on_rebalance_complete)

    # -- events the monitor is told of ---------------------------------------------------

    def decode_error(self, topic: str, policy: str) -> None:
        """A message of ``topic`` could not be decoded (handled by ``policy``)."""
        key = (topic, policy)
        self.decode_errors[key] = self.decode_errors.get(key, 0) + 1

    def agent_error(self, agent: str) -> None:
        """Agent ``agent`` raised (whatever its ``on_error`` policy does next)."""
        self.agent_errors[agent] = self.agent_errors.get(agent, 0) + 1

    async def _on_revoke(self, revoked: frozenset[TP]) -> None:
        if self._rebalance_since is None:
            self._rebalance_since = trio.current_time()

    async def _on_assign(self, assigned: frozenset[TP]) -> None:
        if self._rebalance_since is None:
            self._rebalance_since = trio.current_time()

    def _on_rebalance_complete(self, sender: Any, **kwargs: Any) -> None:
        since, self._rebalance_since = self._rebalance_since, None
        self.rebalances += 1
        if since is not None:
            self.rebalance_duration.observe(trio.current_time() - since)

    # -- the commit participant (measures commit latency) ---------------------------------

    def _commits_done(self) -> int:
        worker = self._worker
        committer = worker.committer if worker is not None else None
        return committer.statistics().commits if committer is not None else 0

    def _settle_commit(self) -> None:
        """Observe the latency of the last commit sequence if it reached the group commit."""
        started = self._commit_started
        worker = self._worker
        if started is None or worker is None or worker.committer is None:
            return
        st = worker.committer.statistics()
        if st.commits > started[1] and st.last_commit_at is not None:
            self.commit_latency.observe(max(st.last_commit_at - started[0], 0.0))
            self._commit_started = None

    async def prepare_commit(self, offsets: Mapping[TP, int]) -> None:
        self._settle_commit()
        self._commit_started = (trio.current_time(), self._commits_done()) if offsets else None

    async def complete_commit(self, offsets: Mapping[TP, int]) -> None:
        pass

    async def abort_commit(self) -> None:
        self._commit_started = None

    # -- sampling ----------------------------------------------------------------

    def _inboxes(self) -> list[tuple[str, Inbox[Any]]]:
        worker = self._worker
        if worker is None:
            return []
        agents = [a for a in self.app.agents.values() if isinstance(a.channel, Topic)]
        pairs: list[tuple[str, Inbox[Any]]] = []
        # The worker subscribes topic agents in registration order, one inbox each.
        for agent, (topic, inbox) in zip(agents, worker._topic_inboxes, strict=False):
            if topic is agent.channel:
                pairs.append((agent.name, inbox))
        return pairs

    def sample(self) -> MonitorSnapshot:
        """Fold the lanes' progress into the counters and remember a sample."""
        seen: set[tuple[str, TP]] = set()
        for agent, inbox in self._inboxes():
            for tp, lane in list(inbox.lanes.items()):
                if tp is None:
                    continue
                frontier = lane.frontier()
                if frontier is None:
                    continue
                key = (agent, tp)
                seen.add(key)
                previous = self._last.get(key)
                self._last[key] = (id(lane), frontier)
                if previous is None or previous[0] != id(lane):
                    # A lane new since the last sample (an assignment): count from its first event.
                    start = lane.first_offset
                    if start is None:
                        continue
                    previous = (id(lane), start)
                moved = frontier - previous[1]
                if moved > 0:
                    self._by_agent[agent] = self._by_agent.get(agent, 0) + moved
                    self._by_topic[tp.topic] = self._by_topic.get(tp.topic, 0) + moved
                    self.events[key] = self.events.get(key, 0) + moved
        for key in set(self._last) - seen:
            del self._last[key]
        snapshot = MonitorSnapshot(trio.current_time(), dict(self._by_agent), dict(self._by_topic))
        self._samples.append(snapshot)
        while len(self._samples) > 2 and snapshot.at - self._samples[1].at >= self.window:
            self._samples.popleft()
        return snapshot

    # -- lag ----------------------------------------------------------------------------

    def lags(self) -> dict[TP, PartitionLag]:
        """Consumer lag of each source partition assigned to this worker."""
        worker = self._worker
        if worker is None:
            return {}
        consumer = worker.consumer
        ends = consumer.high_watermarks() if consumer is not None else {}
        committer = worker.committer
        committed = committer.statistics().committed if committer is not None else {}
        starts: dict[TP, int] = {}
        for _agent, inbox in self._inboxes():
            for tp, lane in list(inbox.lanes.items()):
                first = lane.first_offset
                if tp is not None and first is not None:
                    starts[tp] = min(first, starts.get(tp, first))
        result: dict[TP, PartitionLag] = {}
        for tp in sorted(worker.source_partitions()):
            done = committed.get(tp)
            if done is None:
                done = starts.get(tp)
            end = ends.get(tp)
            if done is None and end == 0:
                done = 0  # an empty partition: nothing to be behind on
            result[tp] = PartitionLag(end=end, committed=done)
        self._settle_commit()
        return result

    # -- the report -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The ``/stats/`` document (JSON-able)."""
        now = self.sample()
        oldest = self._samples[0]
        elapsed = now.at - oldest.at

        def rates(current: dict[str, int], before: dict[str, int]) -> dict[str, dict[str, float]]:
            def per_second(name: str, total: int) -> float:
                return round((total - before.get(name, 0)) / elapsed, 3) if elapsed else 0.0

            return {
                name: {"events": total, "events_per_second": per_second(name, total)}
                for name, total in sorted(current.items())
            }

        worker = self._worker
        partitions: dict[str, dict[str, Any]] = {}
        commits: dict[str, Any] = {}
        membership: dict[str, Any] = {}
        if worker is not None:
            frontiers = worker.frontiers()
            lanes: dict[TP, dict[str, int]] = {}
            for _agent, inbox in self._inboxes():
                for st in inbox.statistics():
                    if st.tp is None:
                        continue
                    entry = lanes.setdefault(st.tp, {"buffered": 0, "in_flight": 0})
                    entry["buffered"] += st.buffered
                    entry["in_flight"] += st.in_flight
            committer = worker.committer
            cstats = committer.statistics() if committer is not None else None
            lags = self.lags()
            for tp in sorted(worker.assigned):
                frontier = frontiers.get(tp)
                committed = cstats.committed.get(tp) if cstats is not None else None
                lag = frontier - committed if frontier is not None and committed is not None else None
                partitions[str(tp)] = {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "processed_offset": frontier,
                    "committed_offset": committed,
                    "commit_lag": lag,
                    "stalled_at": cstats.stalled.get(tp) if cstats is not None else None,
                    "end_offset": lags[tp].end if tp in lags else None,
                    "consumer_lag": lags[tp].lag if tp in lags else None,
                    **lanes.get(tp, {"buffered": 0, "in_flight": 0}),
                }
            if cstats is not None:
                commits = {
                    "commits": cstats.commits,
                    "seconds_since_last_commit": (
                        round(trio.current_time() - cstats.last_commit_at, 3)
                        if cstats.last_commit_at is not None
                        else None
                    ),
                    "stalled": {str(tp): off for tp, off in cstats.stalled.items()},
                    "behind": {str(tp): off for tp, off in cstats.behind.items()},
                }
            since = worker.unassigned_since
            membership = {
                "assigned_partitions": len(worker.source_partitions()),
                "generation": worker.generation,
                "unassigned_for_seconds": (
                    round(trio.current_time() - since, 3) if since is not None else None
                ),
            }
            producer = worker.producer
            if producer is not None:
                pst = producer.statistics()
                commits["producer"] = {"queued": pst.queued, "delivered": pst.delivered, "failed": pst.failed}
        return {
            "window_seconds": round(elapsed, 3),
            "agents": rates(now.by_agent, oldest.by_agent),
            "topics": rates(now.by_topic, oldest.by_topic),
            "partitions": partitions,
            "commit": commits,
            "membership": membership,
            "broker": self.app._broker_watch.stats(),
            "tables": self._tables(),
            "process": worker_info(self.app.conf),
        }

    def _tables(self) -> dict[str, dict[str, Any]]:
        # Not ``app.tables``: that property creates the table manager.
        manager = getattr(self.app, "_table_manager", None) or {}
        return {
            name: {
                "partitioner": table.partitioner,
                # writes from events on another partition than their key's, among those checked
                "misrouted_writes": table.misrouted_writes,
                "event_writes": table.event_writes,
                # writes outside events to partitions another worker owns (not applied there)
                "foreign_writes": table.foreign_writes,
            }
            for name, table in sorted(manager.items())
        }
