"""``GET /metrics``: the worker's numbers in the Prometheus text format.

Nothing is counted on the hot path for this: at each scrape a
``prometheus_client`` collector reads the monitor (:mod:`.._monitor`), the
commit loop, the producer, the lanes and the tables, as ``/stats/`` does.
Each app has its own registry (several apps in one process do not mix), with
prometheus-client's process and platform collectors beside streamtrio's.

Served by the worker's web server, or, for an app with ``web_enabled=False``,
on ``metrics_port`` by a server that serves nothing else
(:class:`MetricsServer`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import WorkerError
from .app import hypercorn_log

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

    from .._app import App
    from .._worker import Worker

__all__ = ["MetricsServer", "registry", "render"]

log = logging.getLogger(__name__)


class _Collector:
    """Reads a running worker at scrape time (registered in the app's registry)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        return []  # an unchecked collector: what exists depends on the running worker

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        app = self.app
        monitor = app.monitor
        worker = app._worker
        monitor.sample()

        events = CounterMetricFamily(
            "streamtrio_events",
            "Events an agent finished (acked), per source partition",
            labels=["topic", "partition", "agent"],
        )
        for (agent, tp), count in sorted(monitor.events.items()):
            events.add_metric([tp.topic, str(tp.partition), agent], count)
        yield events

        in_flight = GaugeMetricFamily(
            "streamtrio_events_in_flight", "Events handed to agents and not finished yet"
        )
        buffered = GaugeMetricFamily(
            "streamtrio_events_buffered", "Events fetched and waiting in the partition lanes"
        )
        flying = waiting = 0
        for _agent, inbox in monitor._inboxes():
            for st in inbox.statistics():
                flying += st.in_flight
                waiting += st.buffered
        in_flight.add_metric([], flying)
        buffered.add_metric([], waiting)
        yield in_flight
        yield buffered

        lag = GaugeMetricFamily(
            "streamtrio_consumer_lag",
            "High watermark minus committed offset, per assigned source partition",
            labels=["topic", "partition"],
        )
        for tp, entry in monitor.lags().items():
            if entry.lag is not None:
                lag.add_metric([tp.topic, str(tp.partition)], entry.lag)
        yield lag

        yield _histogram(
            "streamtrio_commit_latency_seconds",
            "Seconds from a commit's offset snapshot to the committed group offsets",
            monitor.commit_latency,
        )
        commits = CounterMetricFamily("streamtrio_commits", "Successful offset commits")
        committer = worker.committer if worker is not None else None
        commits.add_metric([], committer.statistics().commits if committer is not None else 0)
        yield commits

        rebalances = CounterMetricFamily("streamtrio_rebalances", "Rebalances completed (tables recovered)")
        rebalances.add_metric([], monitor.rebalances)
        yield rebalances
        yield _histogram(
            "streamtrio_rebalance_duration_seconds",
            "Seconds from a rebalance's start (joining, or a revoke) to the partitions resumed",
            monitor.rebalance_duration,
        )
        assigned = GaugeMetricFamily(
            "streamtrio_assigned_partitions", "Source partitions assigned to this worker"
        )
        assigned.add_metric([], len(worker.source_partitions()) if worker is not None else 0)
        yield assigned

        yield from _table_metrics(app)

        queued = GaugeMetricFamily(
            "streamtrio_producer_queued_messages", "Messages produced and not delivered yet"
        )
        delivered = CounterMetricFamily(
            "streamtrio_producer_delivered_messages", "Messages the producer delivered (all topics)"
        )
        failed = CounterMetricFamily(
            "streamtrio_producer_failed_messages", "Messages whose delivery failed (all topics)"
        )
        producer = worker.producer if worker is not None else None
        pst = producer.statistics() if producer is not None else None
        queued.add_metric([], pst.queued if pst is not None else 0)
        delivered.add_metric([], pst.delivered if pst is not None else 0)
        failed.add_metric([], pst.failed if pst is not None else 0)
        yield queued
        yield delivered
        yield failed

        decode = CounterMetricFamily(
            "streamtrio_decode_errors",
            "Messages that could not be decoded, per topic and value_decode_error policy",
            labels=["topic", "policy"],
        )
        for (topic, policy), count in sorted(monitor.decode_errors.items()):
            decode.add_metric([topic, policy], count)
        yield decode

        errors = CounterMetricFamily(
            "streamtrio_agent_errors", "Exceptions raised by agents or their outputs", labels=["agent"]
        )
        for agent, count in sorted(monitor.agent_errors.items()):
            errors.add_metric([agent], count)
        yield errors


def _histogram(name: str, documentation: str, histogram: Any) -> Metric:
    from prometheus_client.core import HistogramMetricFamily

    return HistogramMetricFamily(name, documentation, buckets=histogram.buckets(), sum_value=histogram.sum)


def _table_metrics(app: App) -> Iterable[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    keys = GaugeMetricFamily(
        "streamtrio_table_keys",
        "Keys of a table held for the partitions this worker serves",
        labels=["table"],
    )
    replayed = CounterMetricFamily(
        "streamtrio_recovery_replayed_records",
        "Changelog records replayed by table recovery on this worker",
        labels=["table"],
    )
    followed = CounterMetricFamily(
        "streamtrio_standby_applied_records",
        "Changelog records applied by the standby follower (standby partitions, GlobalTables)",
        labels=["table"],
    )
    remaining = GaugeMetricFamily(
        "streamtrio_recovery_remaining_records",
        "Changelog records a table's running recovery still has to replay (0: none runs; "
        "absent while the changelogs' end is unknown)",
        labels=["table"],
    )
    partitions = GaugeMetricFamily(
        "streamtrio_recovery_remaining_partitions",
        "Changelog partitions the running recovery has not replayed to their end (0: none runs)",
    )
    misrouted = CounterMetricFamily(
        "streamtrio_table_misrouted_writes",
        "Table writes from an event of another partition than the key's own (sampled; "
        "see docs/tables.md, Where keys live)",
        labels=["table"],
    )
    manager = getattr(app, "_table_manager", None)
    parts = 0
    if manager and manager.running:
        st = manager.statistics()
        progress = st.recovery
        running = progress is not None and not progress.finished
        for name, table in sorted(manager.items()):
            left = progress.tables.get(name, 0) if progress is not None and running else 0
            if left is not None:
                remaining.add_metric([name], left)
            keys.add_metric([name], len(table))
            misrouted.add_metric([name], table.misrouted_writes)
            changelog = table.changelog_topic_name
            replayed.add_metric([name], sum(n for tp, n in st.recovered.items() if tp.topic == changelog))
            followed.add_metric([name], sum(n for tp, n in st.followed.items() if tp.topic == changelog))
        if progress is not None and running:
            parts = progress.remaining
    partitions.add_metric([], parts)
    yield keys
    yield replayed
    yield followed
    yield remaining
    yield partitions
    yield misrouted


_registries: weakref.WeakKeyDictionary[App, CollectorRegistry] = weakref.WeakKeyDictionary()


def registry(app: App) -> CollectorRegistry:
    """The app's Prometheus registry (made at the first scrape)."""
    reg = _registries.get(app)
    if reg is None:
        from prometheus_client import PlatformCollector, ProcessCollector
        from prometheus_client.registry import CollectorRegistry

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector(app))
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        _registries[app] = reg
    return reg


def render(app: App, accept: str | None = None) -> tuple[bytes, str]:
    """The metrics document and its content type (OpenMetrics if ``accept`` asks for it)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry(app)), content_type


class MetricsServer:
    """Worker component: ``/metrics`` on ``metrics_port`` for an app without a web server.

    Binds before the worker joins the group (a port in use is a start-up
    error) and is cancelled with the other components.
    """

    name = "metrics"

    def __init__(self, app: App) -> None:
        self.app = app
        self.bound: list[str] = []

    def attach(self, worker: Worker) -> None:
        pass

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve ``GET /metrics`` until cancelled.

        Raises:
            WorkerError: the port cannot be bound (names host:port).
        """
        import hypercorn.config
        from hypercorn.trio.run import worker_serve
        from hypercorn.utils import wrap_app

        conf = self.app.conf
        config = hypercorn.config.Config()
        where = f"{conf.web_bind}:{conf.metrics_port}"
        config.bind = [where]
        config.accesslog = None
        config.errorlog = hypercorn_log()
        config.graceful_timeout = 1.0
        try:
            sockets = config.create_sockets()
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
        except OSError as exc:
            raise WorkerError(
                f"metrics server: cannot listen on {where}: {exc.strerror or exc} "
                "(set metrics_port to a free port, 0 for any, or None for no metrics server)"
            ) from exc
        wrapped = wrap_app(partial(_asgi_metrics, self.app), config.wsgi_max_body_size, "asgi")
        try:
            async with trio.open_nursery() as nursery:
                self.bound = await nursery.start(partial(worker_serve, wrapped, config, sockets=sockets))
                log.info("metrics on %s/metrics", self.bound[0])
                task_status.started()
        finally:
            self.bound = []


async def _asgi_metrics(app: App, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A minimal ASGI app: ``GET /metrics`` and 404 for anything else."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"].rstrip("/") == "/metrics" and scope["method"] in ("GET", "HEAD"):
        headers = dict(scope.get("headers") or [])
        body, content_type = render(app, headers.get(b"accept", b"").decode("latin-1"))
        status = 200
    else:
        body, content_type, status = b"not found: this server serves /metrics only\n", "text/plain", 404
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
