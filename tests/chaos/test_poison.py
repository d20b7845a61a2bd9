"""Poison values in the verified workload, under each decode and ``on_error`` policy.

docs/agents.md (Errors) and docs/worker.md (Acks and commits) promise:

- ``value_decode_error="skip"``: an undecodable value is logged, counted
  (``streamtrio_decode_errors_total{policy="skip"}``) and acked;
  ``"dead_letter"``: its raw message goes to ``<topic>-dlq`` with
  ``streamtrio-reason``/``-topic``/``-partition``/``-offset`` headers;
- ``on_error="dead_letter"``: the event the agent raised on goes to the
  dead-letter topic likewise (reason ``agent <name>``), and is acked;
- ``on_error="stop"``: the worker stops with the traceback and exit code 1;
  nothing at or after the failing event is committed;
- ``on_error="restart"``: the actor gets the same event again, and again; its
  partition's commits stay behind it.

So the verifier checks, besides nothing lost among the good events: every
poison value below the committed offsets is skipped (and counted) or in the
dead-letter topic with its source coordinates, and no offset is committed
past an event that was neither processed nor dead-lettered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from ..kafka._util import committed
from ._broker import ChaosBroker
from ._cluster import PARTITIONS, Cluster, chaos_cluster, poison
from ._verify import Truth, metric, read_all
from .conftest import LONG

SECONDS = 20.0 if LONG else 6.0
EVERY = 97  # about 1% poison: half undecodable, half negative (the agent raises)


def check(cluster: Cluster) -> None:
    report = cluster.report
    assert report.ok(), f"{report.problems()}: {report.line()}\n{cluster.logs()}"


def dead_letters(cluster: Cluster) -> dict[tuple[int, int], tuple[bytes, dict[str, bytes]]]:
    """The dead-letter topic's messages by their source position: (value, streamtrio headers)."""
    letters: dict[tuple[int, int], tuple[bytes, dict[str, bytes]]] = {}
    for m in read_all(cluster.kafka.bootstrap, f"{cluster.source}-dlq", PARTITIONS):
        headers = {k: v for k, v in (m.headers() or []) if k.startswith("streamtrio-")}
        where = (int(headers["streamtrio-partition"]), int(headers["streamtrio-offset"]))
        letters[where] = (m.value(), headers)
    return letters


def check_poisons(cluster: Cluster, truth: Truth, decode_policy: str) -> None:
    """Each poison value skipped and counted, or dead-lettered with its coordinates."""
    report = cluster.report
    letters = dead_letters(cluster)
    decode = {pos: raw for pos, raw in truth.poisons.items() if not raw.startswith(b"-")}
    agent = {pos: raw for pos, raw in truth.poisons.items() if raw.startswith(b"-")}
    expected = dict(agent) if decode_policy == "skip" else dict(truth.poisons)
    wrong = []
    for pos, raw in expected.items():
        letter = letters.get(pos)
        reason = b"decode" if pos in decode else b"agent count"
        if letter is None:
            wrong.append(f"{pos} ({raw!r}) not dead-lettered")
        elif letter[0] != raw or letter[1].get("streamtrio-topic") != cluster.source.encode():
            wrong.append(f"{pos}: dead letter {letter}")
        elif letter[1].get("streamtrio-reason") != reason:
            wrong.append(f"{pos}: reason {letter[1].get('streamtrio-reason')!r}, not {reason!r}")
    strays = set(letters) - set(expected)
    if strays:
        wrong.append(f"{len(strays)} dead letters of no expected poison, e.g. {sorted(strays)[:3]}")
    skipped = metric(cluster.metrics, "streamtrio_decode_errors_total", topic=cluster.source, policy="skip")
    if decode_policy == "skip" and skipped < len(decode):
        wrong.append(f"{skipped:g} skips counted in /metrics for {len(decode)} undecodable values")
    handled = f"skipped, counted {skipped:g}" if decode_policy == "skip" else "dead-lettered"
    report.figures["poison"] = (
        f"{len(decode)} undecodable ({handled}), "
        f"{len(agent)} raising (dead-lettered), {len(letters)} dead letters"
    )
    report.failed_checks += wrong[:5]


@pytest.mark.parametrize(
    "decode_policy", [pytest.param("skip", marks=pytest.mark.chaos_long_only), "dead_letter"]
)
async def test_poison_values_are_skipped_or_dead_lettered_with_their_coordinates(
    proxied_kafka: ChaosBroker, tmp_path: Path, decode_policy: str
) -> None:
    env = {"CHAOS_DECODE_ERROR": decode_policy, "CHAOS_ON_ERROR": "dead_letter"}
    scenario = f"poison: value_decode_error={decode_policy}, on_error=dead_letter"
    async with chaos_cluster(
        proxied_kafka, tmp_path, scenario, workers=2, web=True, env=env, poison_every=EVERY
    ) as cluster:
        for slot in cluster.slots:
            cluster.start(slot)
        for slot in cluster.slots:
            await cluster.wait_assigned(slot)
        await trio.sleep(SECONDS)
        cluster.fault_over()
        await cluster.finish()
        truth = Truth.of(cluster.producing.produced)
        await trio.to_thread.run_sync(check_poisons, cluster, truth, decode_policy)
    check(cluster)


def find(produced: Any, value: bytes) -> tuple[int, int] | None:
    for partition, offsets in list(produced.values.items()):
        for offset, raw in list(offsets.items()):
            if raw == value:
                return partition, offset
    return None


@pytest.mark.parametrize("on_error", ["stop", pytest.param("restart", marks=pytest.mark.chaos_long_only)])
async def test_a_value_the_agent_raises_on_is_never_committed_past(
    proxied_kafka: ChaosBroker, tmp_path: Path, on_error: str
) -> None:
    """One negative value; then the worker is restarted with on_error="dead_letter" to go on."""
    scenario = f"poison: the agent raises, on_error={on_error}"
    async with chaos_cluster(
        proxied_kafka, tmp_path, scenario, workers=1, env={"CHAOS_ON_ERROR": on_error}
    ) as cluster:
        report = cluster.report
        proc = cluster.start(0)
        await cluster.wait_assigned(0)
        await trio.sleep(2)
        bad = poison("agent", 424242)
        cluster.producing.inject(b"key-1", "agent", 424242)
        with trio.fail_after(30):
            while (where := find(cluster.producing.produced, bad)) is None:
                await trio.sleep(0.1)
        partition, offset = where
        report.faults += 1
        if on_error == "stop":
            code = await cluster.exited(0, timeout=60)
            report.figures["exit"] = str(code)
            if code != 1:
                report.failed_checks.append(f"on_error=stop: exited {code}, not 1")
            if f"partition={partition} offset={offset}" not in proc.log():
                report.failed_checks.append("the traceback does not name the poison's partition and offset")
        else:
            await proc.wait_for_log("Poison", count=3, timeout=60)  # failed, retried, failed again
            await trio.sleep(3)
        done = await trio.to_thread.run_sync(
            committed, proxied_kafka.bootstrap, cluster.app_id, cluster.source, PARTITIONS
        )
        at = done.get(partition)
        report.figures["committed at the poison's partition"] = f"{at} (poison at {offset})"
        if at is None or at > offset:
            report.failed_checks.append(f"committed {at} past the poison at {partition}:{offset}")
        if on_error == "restart":
            if at != offset:
                report.failed_checks.append(
                    f"on_error=restart: committed {at}, not up to the poison {offset}"
                )
            if proc.proc.poll() is not None:
                report.failed_checks.append(f"on_error=restart: the worker exited {proc.proc.returncode}")
            code, _took = await cluster.stop(0, fault=False)
            report.figures["exit on SIGTERM while retrying"] = str(code)
        cluster.start(0, env={"CHAOS_ON_ERROR": "dead_letter"})
        await cluster.wait_assigned(0)
        await trio.sleep(2)
        cluster.fault_over()
        await cluster.finish()
        letters = await trio.to_thread.run_sync(dead_letters, cluster)
        if set(letters) != {(partition, offset)}:
            report.failed_checks.append(
                f"dead letters at {sorted(letters)[:5]}, not only at {(partition, offset)}"
            )
    check(cluster)
