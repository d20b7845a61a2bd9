"""Workers stopped gracefully under load: a rolling restart, repeated shutdowns, a rebalance storm.

Kafka Streams' streams_smoke_test and streams_shutdown_deadlock_test do the
like. Every stop is a SIGTERM and must exit 0 within the app's
``shutdown_timeout`` plus 2 s (docs/worker.md, Shutdown); the group goes on
processing, and after the last change it catches up with nothing lost.
"""

from __future__ import annotations

from pathlib import Path

import trio

from ._broker import ChaosBroker
from ._cluster import Cluster, chaos_cluster
from .conftest import LONG

ROLLING_ROUNDS = 3 if LONG else 1
SHUTDOWNS = 10 if LONG else 3
STORM_SECONDS = 120.0 if LONG else 12.0
STORM_PERIOD = 3.0


async def start_all(cluster: Cluster) -> None:
    for slot in cluster.slots:
        cluster.start(slot)
    for slot in cluster.slots:
        await cluster.wait_assigned(slot)


def check(cluster: Cluster) -> None:
    report = cluster.report
    assert report.ok(), f"{report.problems()}: {report.line()}\n{cluster.logs()}"


async def test_rolling_restart(proxied_kafka: ChaosBroker, tmp_path: Path) -> None:
    """Each worker in turn: SIGTERM, restart, wait until it has partitions again."""
    async with chaos_cluster(proxied_kafka, tmp_path, "rolling restart") as cluster:
        await start_all(cluster)
        for _ in range(ROLLING_ROUNDS):
            for slot in cluster.slots:
                await trio.sleep(1)
                await cluster.stop(slot)
                cluster.start(slot)
                await cluster.wait_assigned(slot)
        cluster.fault_over()
        await cluster.finish()
    check(cluster)


async def test_shutdown_under_load_within_the_deadline(proxied_kafka: ChaosBroker, tmp_path: Path) -> None:
    """A random worker stopped while every worker is busy (a fast producer)."""
    async with chaos_cluster(
        proxied_kafka,
        tmp_path,
        f"shutdown under load x{SHUTDOWNS}",
        shutdown_timeout=3.0,
        batch=100,
        interval=0.02,
    ) as cluster:
        await start_all(cluster)
        for _ in range(SHUTDOWNS):
            await trio.sleep(2)
            slot = cluster.pick_running()
            await cluster.stop(slot)
            cluster.start(slot)
            await cluster.wait_assigned(slot)
        cluster.fault_over()
        await cluster.finish(catch_up_timeout=180)
    times = [took for _, _, took in cluster.exits]
    cluster.report.notes.append(f"exits {min(times):.1f}-{max(times):.1f}s (deadline 3 s + 2 s)")
    check(cluster)


async def test_rebalance_storm(proxied_kafka: ChaosBroker, tmp_path: Path) -> None:
    """One worker stays; the two others join and leave, one change every few seconds."""
    async with chaos_cluster(proxied_kafka, tmp_path, f"rebalance storm {STORM_SECONDS:g}s") as cluster:
        cluster.start(0)
        await cluster.wait_assigned(0)
        began = trio.current_time()
        while trio.current_time() - began < STORM_SECONDS:
            await trio.sleep(STORM_PERIOD)
            slot = cluster.random.choice([1, 2])
            if slot in cluster.running():
                await cluster.stop(slot)
            else:
                cluster.start(slot)
                cluster.report.faults += 1
        cluster.fault_over()
        await cluster.finish()
    check(cluster)
