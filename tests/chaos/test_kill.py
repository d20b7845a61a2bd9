"""kill -9 of random workers among three while events are produced (at_least_once and exactly_once).

Kafka Streams' streams_eos_test and streams_smoke_test do the same with its
verified workload. Each round kills one running worker with SIGKILL and
starts it again at once with the same data dir (so, under exactly_once, the
same transactional id fences its zombie).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ._broker import ChaosBroker
from ._cluster import Cluster, chaos_cluster
from .conftest import LONG

KILLS = 12 if LONG else 3
EVERY = 5.0 if LONG else 3.0


async def kill_loop(cluster: Cluster, *, kills: int, every: float) -> None:
    for slot in cluster.slots:
        cluster.start(slot)
    for slot in cluster.slots:
        await cluster.wait_assigned(slot)
    for _ in range(kills):
        await trio.sleep(every)
        slot = cluster.pick_running()
        cluster.kill9(slot)
        await trio.sleep(0.5)
        cluster.start(slot)
    cluster.fault_over()


@pytest.mark.parametrize(
    "guarantee", [pytest.param("at_least_once", marks=pytest.mark.chaos_long_only), "exactly_once"]
)
async def test_kill_9_loop(proxied_kafka: ChaosBroker, tmp_path: Path, guarantee: str) -> None:
    async with chaos_cluster(proxied_kafka, tmp_path, "kill -9 loop", guarantee=guarantee) as cluster:
        await kill_loop(cluster, kills=KILLS, every=EVERY)
        report = await cluster.finish()
    if proxied_kafka.kind == "tansu" and guarantee == "exactly_once" and not report.ok():
        # Tansu hands aborted transactions to read_committed readers (a transactional
        # producer's aborted record is read back; Apache Kafka hides it), so the
        # verifier sees the aborted attempts of the killed workers. Nothing may be lost.
        assert report.lost == 0 and report.regressions == 0, report.line()
        pytest.xfail(f"Tansu shows aborted transactions to read_committed readers: {report.line()}")
    assert report.ok(), f"{report.problems()}: {report.line()}\n{cluster.logs()}"
