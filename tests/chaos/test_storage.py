"""A worker's local store under faults: a full LMDB map, a deleted or corrupted data dir.

docs/tables.md (Map growth, Damaged stores) promises: at ``lmdb_max_map_size``
the commit fails with a ``StoreError`` naming the setting and the table
partitions and the worker stops, with nothing lost (a restart with a bigger
limit recovers everything from the changelog); a data dir deleted, or
damaged, between restarts is rebuilt from the changelogs with a warning
naming the directory, and a damaged store is never served as data. One
worker (it owns every partition, so the restarted worker rebuilds them all),
the web view on: the verifier reads every key of both tables from it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import trio

from ._broker import ChaosBroker
from ._cluster import Cluster, chaos_cluster
from .conftest import LONG

MIB = 1 << 20
ROUNDS = 3 if LONG else 1


def check(cluster: Cluster) -> None:
    report = cluster.report
    assert report.ok(), f"{report.problems()}: {report.line()}\n{cluster.logs()}"


async def test_a_full_lmdb_map_stops_the_worker_and_a_bigger_limit_recovers_everything(
    proxied_kafka: ChaosBroker, tmp_path: Path
) -> None:
    """``lmdb_max_map_size`` of 1 MiB (the smallest map) and a third table of 2 KB values per key:
    the map fills after a few hundred keys."""
    async with chaos_cluster(
        proxied_kafka, tmp_path, "LMDB map full at 1 MiB", workers=1, web=True, env={"CHAOS_PAD": "2000"}
    ) as cluster:
        proc = cluster.start(0, env={"CHAOS_MAX_MAP_SIZE": str(MIB)})
        code = await cluster.exited(0, timeout=120)
        log = proc.log()
        full = re.search(r"StoreError: LMDB store in .* is full .*", log)
        cluster.report.figures["first exit"] = str(code)
        if code != 1:
            cluster.report.failed_checks.append(f"the worker with a full map exited {code}, not 1")
        if full is None or "lmdb_max_map_size" not in full.group(0):
            cluster.report.failed_checks.append("no StoreError naming lmdb_max_map_size in the log")
        elif not re.search(r"\b(counts|sums|pads)\b", full.group(0)):
            cluster.report.failed_checks.append(f"the StoreError names no table: {full.group(0)}")
        cluster.report.faults += 1
        for _ in range(ROUNDS):
            cluster.start(0)  # the default limit, 1 TiB
            await cluster.wait_assigned(0)
            await trio.sleep(3)
            if ROUNDS > 1:
                await cluster.stop(0, fault=False)
        cluster.fault_over()
        if cluster.procs[0] is None:
            cluster.start(0)
            await cluster.wait_assigned(0)
        await cluster.finish()
    check(cluster)


def garble_values(datadir: Path) -> int:
    """Flip a byte in the stored values of a few keys (every copy): only the checksums can tell."""
    data = datadir / "data.mdb"
    raw = bytearray(data.read_bytes())
    garbled = 0
    for key in (b"key-500", b"key-777", b"key-901"):
        at = raw.find(key)
        while at >= 0:  # copy-on-write leaves old copies of a page: garble each
            raw[at + len(key) + 2] ^= 0x40  # LMDB stores a value right after its key
            garbled += 1
            at = raw.find(key, at + 1)
    data.write_bytes(raw)
    return garbled


async def test_a_deleted_then_a_corrupted_data_dir_is_rebuilt_from_the_changelog(
    proxied_kafka: ChaosBroker, tmp_path: Path
) -> None:
    """Restarts alternate: the data dir deleted, then values in it garbled (then deleted...)."""
    damages = ["deleted", "corrupted"] * ROUNDS
    async with chaos_cluster(
        proxied_kafka,
        tmp_path,
        f"data dir deleted / corrupted between restarts x{len(damages)}",
        workers=1,
        web=True,
    ) as cluster:
        datadir = cluster.datadir(0)
        cluster.start(0)
        await cluster.wait_assigned(0)
        rebuilt_ok = 0
        for damage in damages:
            await trio.sleep(2)
            await cluster.stop(0)
            if damage == "deleted":
                shutil.rmtree(datadir)
            else:
                assert garble_values(datadir) > 0, "no value of the chosen keys found in data.mdb"
            proc = cluster.start(0)
            await cluster.wait_assigned(0)
            log = proc.log()
            rebuilt = re.search(r"tables: the store in (\S+) was rebuilt from the changelogs \((.*)\)", log)
            if rebuilt is None or rebuilt.group(1) != str(datadir):
                cluster.report.failed_checks.append(f"{proc.name} ({damage}): no warning naming {datadir}")
            elif damage == "corrupted" and f"moved to {datadir}/corrupted" not in rebuilt.group(2):
                cluster.report.failed_checks.append(f"{proc.name}: {rebuilt.group(0)}")
            else:
                rebuilt_ok += 1
        cluster.report.figures["rebuilt with a warning"] = f"{rebuilt_ok} of {len(damages)}"
        cluster.fault_over()
        await trio.sleep(2)
        await cluster.finish()
    check(cluster)
