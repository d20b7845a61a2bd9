"""The broker watch: a running worker that cannot reach the broker says so.

librdkafka waits for an unreachable broker quietly (a frozen broker keeps its
connections open and answers nothing), and a worker without traffic has no
commit or delivery of its own waiting to report it. The watch asks the broker
a cheap question every :data:`PROBE_EVERY` seconds (``Transport.probe``) and,
while it gets no answer, warns at once and every :data:`REPORT_EVERY` seconds,
naming the broker, how long, the last error and what waits for the broker.
``/stats`` shows it under ``broker``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ._app import App
    from ._worker import Worker

__all__ = ["BrokerWatch"]

log = logging.getLogger(__name__)

#: seconds between two questions to the broker
PROBE_EVERY = 5.0
#: seconds the broker has to answer one
PROBE_TIMEOUT = 4.0
#: seconds between two warnings while the broker does not answer
REPORT_EVERY = 10.0


class BrokerWatch:
    """A worker component; see the module docstring."""

    name = "broker watch"

    def __init__(self, app: App) -> None:
        self.app = app
        #: trio time since which the broker has not answered (None: it answers)
        self.unreachable_since: float | None = None
        self.last_error: str | None = None
        self._worker: Worker | None = None

    def attach(self, worker: Worker) -> None:
        self._worker = worker
        self.unreachable_since = None
        self.last_error = None

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        reported_at: float | None = None
        while True:
            await trio.sleep(PROBE_EVERY)
            asked = trio.current_time()
            error = await worker.transport.probe(within=PROBE_TIMEOUT)
            now = trio.current_time()
            if error is None:
                if self.unreachable_since is not None:
                    log.warning(
                        "the broker at %s answers again, after %.0fs",
                        self.app.conf.broker,
                        now - self.unreachable_since,
                    )
                self.unreachable_since = self.last_error = None
                reported_at = None
                continue
            if self.unreachable_since is None:
                self.unreachable_since = asked
            self.last_error = error
            if reported_at is None or now - reported_at >= REPORT_EVERY:
                reported_at = now
                log.warning(
                    "cannot reach the broker at %s for %.0fs (%s): %s",
                    self.app.conf.broker,
                    now - self.unreachable_since,
                    error,
                    waiting_on_broker(worker),
                )

    def stats(self) -> dict[str, Any]:
        since = self.unreachable_since
        return {
            "reachable": since is None,
            "unreachable_for_seconds": round(trio.current_time() - since, 3) if since is not None else None,
            "last_error": self.last_error,
        }


def waiting_on_broker(worker: Worker) -> str:
    """What waits for the broker: fetching, joining, delivering."""
    waits: list[str] = []
    assigned = len(worker.source_partitions())
    if assigned:
        waits.append(f"the events of {assigned} assigned partition(s)")
    elif worker.consumer is not None:
        waits.append("an assignment from the group")
    producer = worker.producer
    if producer is not None:
        queued = producer.statistics().queued
        if queued:
            waits.append(f"the delivery of {queued} produced message(s)")
    return "waiting for " + ", ".join(waits) if waits else "nothing waits for it yet"
