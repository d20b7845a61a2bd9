"""The broker out of reach: every worker's connections cut, and the broker frozen.

Kafka Streams' streams_broker_down_resilience_test and
streams_broker_bounce_test do the like. A cut resets every worker's
connection through the proxy and refuses new ones for the whole cut (the
test's producer reaches the broker directly and goes on producing); a freeze
stops the broker process with SIGSTOP (everything waits, the producer too)
and lets it go on with SIGCONT. Both outlast the workers' session timeout
(4 s): after them the group rebalances and must catch up with nothing lost.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from ._broker import ChaosBroker
from ._cluster import Cluster, chaos_cluster
from .conftest import LONG

CUTS = [5.0, 30.0, 120.0] if LONG else [5.0]
FREEZES = [10.0, 60.0] if LONG else [10.0]


async def start_all(cluster: Cluster) -> None:
    for slot in cluster.slots:
        cluster.start(slot)
    for slot in cluster.slots:
        await cluster.wait_assigned(slot)
    await trio.sleep(2)  # every worker has work in progress when the fault begins


# Found a stale commit after a loss (offsets read before the loss committed after the
# same worker got the partitions back: keys below the truth in 2 of 7 runs); fixed by
# the commit's ownership token (tests/test_lost_partitions.py), since 0 of 6 runs.
@pytest.mark.parametrize("seconds", CUTS)
async def test_whole_broker_network_cut(proxied_kafka: ChaosBroker, tmp_path: Path, seconds: float) -> None:
    scenario = f"network cut {seconds:g}s"
    async with chaos_cluster(proxied_kafka, tmp_path, scenario, proxied=True, web=True) as cluster:
        assert cluster.proxy is not None
        await start_all(cluster)
        cluster.proxy.cut()
        cluster.report.faults += 1
        await trio.sleep(seconds)
        cluster.proxy.heal()
        cluster.fault_over()
        report = await cluster.finish(catch_up_timeout=max(120.0, 2 * seconds))
    assert report.ok(), f"{report.problems()}: {report.line()}\n{cluster.logs()}"


@pytest.mark.parametrize("seconds", FREEZES)
async def test_broker_frozen(proxied_kafka: ChaosBroker, tmp_path: Path, seconds: float) -> None:
    async with chaos_cluster(proxied_kafka, tmp_path, f"broker frozen {seconds:g}s") as cluster:
        await start_all(cluster)
        os.kill(proxied_kafka.pid, signal.SIGSTOP)
        try:
            cluster.report.faults += 1
            await trio.sleep(seconds)
        finally:
            os.kill(proxied_kafka.pid, signal.SIGCONT)
        cluster.fault_over()
        report = await cluster.finish(catch_up_timeout=max(120.0, 2 * seconds))
    assert report.ok(), f"{report.problems()}: {report.line()}\n{cluster.logs()}"
