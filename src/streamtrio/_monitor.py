"""The monitor: events per second per topic and agent, commit lag per partition.

It adds nothing to the hot path. Every ``interval`` seconds it samples the
worker's lanes (:meth:`Lane.statistics`) and the commit loop
(:meth:`Committer.statistics`): the events an agent finished on a partition
since the last sample are how far that lane's frontier (every event below it
is acked) moved (from the lane's first offset for a new lane). Rates are
averaged over the last ``window`` seconds.

Commit lag of a partition is ``frontier - committed``: events already
processed whose offsets are not committed yet (what would be processed again
after a crash). Lag against the end of the partition is not reported: the
test broker's watermarks are not trustworthy (ARCHITECTURE.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ._topic import Topic
from ._types import TP

if TYPE_CHECKING:
    from ._app import App
    from ._lanes import Inbox
    from ._worker import Worker

__all__ = ["Monitor", "MonitorSnapshot"]


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
        self._samples: deque[MonitorSnapshot] = deque()

    def attach(self, worker: Worker) -> None:
        self._worker = worker
        self._reset()

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        while True:
            self.sample()
            await trio.sleep(self.interval)

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
        for key in set(self._last) - seen:
            del self._last[key]
        snapshot = MonitorSnapshot(trio.current_time(), dict(self._by_agent), dict(self._by_topic))
        self._samples.append(snapshot)
        while len(self._samples) > 2 and snapshot.at - self._samples[1].at >= self.window:
            self._samples.popleft()
        return snapshot

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
        }
