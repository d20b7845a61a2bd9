"""streamtrio running one workload (started by the runner as its own process).

Workloads: ``stateless`` (decode and count), ``stateful`` (per-key running
sum in an LMDB table with its changelog; ``eos``: the same with
``processing_guarantee="exactly_once"``), ``windowed`` (per-key count in
10-second tumbling windows by event time), ``join`` (a stream-table left join
on the event's key, writing the joined running total back), ``session``
(per-key counts in session windows with a 10-second gap), ``latency`` (produce-to-agent
latency at a fixed rate; the events come from ``paced_producer.py``, started
here once the partitions are assigned) and ``replay`` (a fresh data dir
recovers a table from a pre-produced changelog).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from _protocol import WINDOW_SECONDS, Meter, parser, percentiles, report

import streamtrio

PARTITIONS = 8


def make_app(args: Any, **options: Any) -> streamtrio.App:
    settings: dict[str, Any] = {
        "broker": f"kafka://{args.bootstrap}",
        "store": "lmdb://",
        "datadir": args.datadir,
        "web_enabled": False,
        "broker_session_timeout": 2.0,
        "broker_heartbeat_interval": 0.2,
        "topic_partitions": PARTITIONS,
        "lmdb_map_size": 1 << 31,
    }
    settings.update(options)
    return streamtrio.App(args.group, **settings)


async def run_throughput(args: Any) -> None:
    app = make_app(args, **({"processing_guarantee": "exactly_once"} if args.workload == "eos" else {}))
    topic = app.topic(args.topic, key_type=str, partitions=PARTITIONS)
    meter = Meter(args.events)
    done = trio.Event()
    state: dict[str, Any] = {"sum": 0}

    if args.workload == "stateless":

        @app.agent(topic)
        async def count(stream: streamtrio.Stream[Any]) -> None:
            total = 0
            async for value in stream:
                total += value["amount"]
                if meter.tick():
                    state["sum"] = total
                    done.set()

    elif args.workload in ("stateful", "eos"):
        totals = app.Table("totals", default=int, key_type=str, value_type=int, partitions=PARTITIONS)

        @app.agent(topic)
        async def running_sum(stream: streamtrio.Stream[Any]) -> None:
            async for value in stream:
                totals[value["user"]] += value["amount"]
                if meter.tick():
                    state["sum"] = sum(totals.values())
                    done.set()

    elif args.workload == "windowed":
        windows = app.Table("windows", default=int, key_type=str, value_type=int, partitions=PARTITIONS)
        per_window = windows.tumbling(WINDOW_SECONDS, expires=86400).relative_to_stream()

        @app.agent(topic)
        async def window_count(stream: streamtrio.Stream[Any]) -> None:
            async for value in stream:
                per_window[value["user"]] += 1
                if meter.tick():
                    state["sum"] = sum(windows.values())
                    state["windows"] = len(windows)
                    done.set()

    elif args.workload == "join":
        # A stream-table join: each event looks up its user's running total (a left
        # join), then writes the new total, so every lookup after the first finds one.
        totals = app.Table("totals", key_type=str, value_type=int, partitions=PARTITIONS)

        @app.agent(topic)
        async def enrich(stream: streamtrio.Stream[Any]) -> None:
            async for value, total in stream.left_join(totals):
                totals[value["user"]] = (total or 0) + value["amount"]
                if meter.tick():
                    state["sum"] = sum(totals.values())
                    done.set()

    elif args.workload == "session":
        # Per-key session counts (gap 10 s of event time: each user's events form sessions).
        sessions = app.Table("sessions", default=int, key_type=str, value_type=int, partitions=PARTITIONS)
        per_session = sessions.session(WINDOW_SECONDS)

        @app.agent(topic)
        async def session_count(stream: streamtrio.Stream[Any]) -> None:
            async for value in stream:
                per_session[value["user"]] += 1
                if meter.tick():
                    state["sum"] = sum(sessions.values())
                    state["sessions"] = len(sessions)
                    done.set()

    else:
        raise SystemExit(f"unknown workload {args.workload!r}")

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await done.wait()
        worker.stop()
    report(meter, state["sum"], **{k: v for k, v in state.items() if k != "sum"})


async def run_latency(args: Any) -> None:
    """Produce at a fixed rate from another process; the agent notes produce-to-agent delay."""
    app = make_app(args)
    topic = app.topic(args.topic, key_type=str, partitions=PARTITIONS)
    meter = Meter(args.events)
    done = trio.Event()
    delays: list[float] = []
    state: dict[str, Any] = {"sum": 0}
    now = time.time

    @app.agent(topic)
    async def timed(stream: streamtrio.Stream[Any]) -> None:
        total = 0
        async for value in stream:
            delays.append(now() - value["ts"])
            total += value["amount"]
            if meter.tick():
                state["sum"] = total
                done.set()

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        with trio.fail_after(60):
            while len(worker.assigned) < PARTITIONS:  # noqa: ASYNC110 (no event for "assigned")
                await trio.sleep(0.05)
        producer = await trio.lowlevel.open_process(
            [
                sys.executable,
                str(Path(__file__).with_name("paced_producer.py")),
                "--bootstrap",
                args.bootstrap,
                "--topic",
                args.topic,
                "--events",
                str(args.events),
                "--rate",
                str(args.rate),
            ]
        )
        await done.wait()
        await producer.wait()
        worker.stop()
    report(meter, state["sum"], rate=args.rate, **percentiles(delays))


class _RecoveryLog(logging.Handler):
    """Collects the per-partition lines the recovery logs ("... recovered: N records ... in S s")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.partitions: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "recovered:" in record.msg and isinstance(record.args, tuple) and len(record.args) == 6:
            self.partitions.append((int(record.args[2]), float(record.args[5])))


async def run_replay(args: Any) -> None:
    """A worker with a fresh data dir recovers the ``totals`` table from its changelog."""
    captured = _RecoveryLog()
    logger = logging.getLogger("streamtrio._tables.recovery")
    logger.addHandler(captured)
    logger.setLevel(logging.INFO)
    app = make_app(args, table_standby_replicas=0)
    topic = app.topic(args.topic, key_type=str, partitions=PARTITIONS)
    totals = app.Table("totals", default=int, key_type=str, value_type=int, partitions=PARTITIONS)

    @app.agent(topic)
    async def idle(stream: streamtrio.Stream[Any]) -> None:
        async for _ in stream:
            pass

    state: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        with trio.fail_after(600):
            await app.tables.wait_until_recovery_completed()
        state["sum"] = sum(totals.values())
        state["keys"] = len(totals)
        worker.stop()
    records = sum(n for n, _ in captured.partitions)
    seconds = max((s for _, s in captured.partitions), default=0.0)
    meter = Meter(records)
    meter.count = records
    meter.first, meter.last = 0.0, seconds
    report(meter, state["sum"], keys=state["keys"], replayed=records)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rate", type=int, default=20_000, help="events/s of the latency workload")
    args = p.parse_args()
    logging.basicConfig(level=os.environ.get("BENCH_LOGLEVEL", "WARNING"))
    if args.workload == "latency":
        trio.run(run_latency, args)
    elif args.workload == "replay":
        trio.run(run_replay, args)
    else:
        trio.run(run_throughput, args)


if __name__ == "__main__":
    main()
