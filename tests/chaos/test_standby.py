"""A standby failover: kill -9 of the active owner while a warm standby follows its changelogs.

docs/tables.md (Standby replicas): with ``table_standby_replicas=1`` a worker
keeps the partitions it does not own warm, and when one is assigned to it,
recovery "replays only the delta". Two workers (each the standby of the
other's partitions), kill -9 of one under load: the survivor takes its
partitions over after the session timeout. The figure: the changelog records
the survivor's recovery replays (its "recovered: N records replayed" log
lines), against what a recovery without a standby would replay (the
changelog records of those partitions); nothing may be lost.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio
from confluent_kafka import Consumer, TopicPartition

from ..kafka._util import last_assignment, unique
from ._broker import ChaosBroker
from ._cluster import chaos_cluster
from .conftest import LONG

KILLS = 4 if LONG else 1
REPLAYED = re.compile(r"table '(\w+)' partition (\d+) recovered: (\d+) records replayed")


def changelog_records(bootstrap: str, topics: list[str], partitions: set[int]) -> int:
    """How many records the changelog partitions hold (high watermarks; the topics are new)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("watermarks")})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(t, p), timeout=15)[1]
            for t in topics
            for p in partitions
        )
    finally:
        consumer.close()


async def test_a_standby_takes_over_a_killed_owner_replaying_almost_nothing(
    proxied_kafka: ChaosBroker, tmp_path: Path
) -> None:
    async with chaos_cluster(
        proxied_kafka,
        tmp_path,
        f"standby failover: kill -9 of the owner x{KILLS}",
        workers=2,
        env={"CHAOS_STANDBYS": "1"},
    ) as cluster:
        for slot in cluster.slots:
            cluster.start(slot)
        for slot in cluster.slots:
            await cluster.wait_assigned(slot)
        replayed = whole = 0
        for kill in range(KILLS):
            victim, survivor = kill % 2, 1 - kill % 2
            await trio.sleep(4)  # the standby follows the victim's changelogs meanwhile
            proc, other = cluster.procs[victim], cluster.procs[survivor]
            assert proc is not None and other is not None
            taken = last_assignment(proc.log(), cluster.source) or set()
            seen = other.log().count("streamtrio._worker: assigned")
            before = len(other.log())
            cluster.kill9(victim)
            await other.wait_for_log("streamtrio._worker: assigned", count=seen + 1, timeout=60)
            replayed += sum(int(n) for _t, _p, n in REPLAYED.findall(other.log()[before:]))
            changelogs = [f"{cluster.app_id}-counts-changelog", f"{cluster.app_id}-sums-changelog"]
            whole += await trio.to_thread.run_sync(
                changelog_records, proxied_kafka.bootstrap, changelogs, taken
            )
            cluster.start(victim)
            await cluster.wait_assigned(victim)
        cluster.fault_over()
        cluster.report.figures["replayed by the new owner"] = f"{replayed} of {whole} changelog records"
        if replayed * 20 > whole:
            cluster.report.failed_checks.append(
                f"the new owner replayed {replayed} of {whole} records (> 5%)"
            )
        report = await cluster.finish()
    assert report.ok(), f"{report.problems()}: {report.line()}\n{cluster.logs()}"
